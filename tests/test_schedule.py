"""The per-step size schedule (full size alone first, smaller sizes ramped up): one SizeSchedule object for
MatryoshkaTrainer's loss, for models that compute their own Matryoshka loss, and for a plain transformers Trainer."""

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import (
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from mrl_text import MatryoshkaConfig, MatryoshkaForMaskedLM, MatryoshkaForSequenceClassification
from mrl_text.training.collator import split_batch
from mrl_text.training.schedule import SizeSchedule, smaller_sizes_scale

from .conftest import tiny_bert_config


def test_smaller_sizes_scale_rises_linearly_after_the_full_size_only_phase():
    assert [smaller_sizes_scale(step, 10, warmup_fraction=0.4) for step in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [smaller_sizes_scale(step, 10, full_size_only_fraction=0.3) for step in (0, 2, 3, 9)] == [0, 0, 1, 1]
    assert smaller_sizes_scale(0, 10) == 1.0  # no schedule: every size fully from the first step


@pytest.mark.slow
def test_trainer_schedules_the_loss_a_classification_model_computes_itself(tiny_tokenizer, tmp_path):
    """A SizeSchedule given to MatryoshkaTrainer reaches nested heads too: the classifier's default loss
    (MatryoshkaCrossEntropyLoss) passes it on to the model, which computes its own Matryoshka cross-entropy."""
    from mrl_text import MatryoshkaTrainer, MatryoshkaTrainingArguments

    torch.manual_seed(0)
    config = MatryoshkaConfig(encoder=tiny_bert_config(vocab_size=len(tiny_tokenizer)), matryoshka_dimensions=[32, 8],
                              matryoshka_weights=[2.0, 1.0], num_labels=3)
    model = MatryoshkaForSequenceClassification(config).eval()
    model.tokenizer = tiny_tokenizer
    data = Dataset.from_dict({"text": ["a b", "c d", "e f", "g h"], "label": [0, 1, 2, 1]})
    args = MatryoshkaTrainingArguments(output_dir=str(tmp_path), max_steps=10, report_to="none", use_cpu=True)
    schedule = SizeSchedule(full_size_only_fraction=0.2, smaller_sizes_warmup_fraction=0.5)
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=data, size_schedule=schedule)
    assert schedule in trainer.callback_handler.callbacks
    batch = trainer.data_collator([data[i] for i in range(4)])
    state = TrainerState(max_steps=10)
    logits = model(**split_batch(batch)[0]["text"]).matryoshka_logits
    per_size = [F.cross_entropy(size_logits, batch["labels"]) for size_logits in logits]
    for step, scale in ((0, 0.0), (1, 0.0), (2, 0.6), (4, 1.0), (9, 1.0)):
        state.global_step = step
        schedule.on_step_begin(args, state, TrainerControl(), model=model)
        loss = trainer.compute_loss(model, batch)
        assert model.smaller_sizes_scale == pytest.approx(scale)
        torch.testing.assert_close(loss, 2.0 * per_size[0] + scale * per_size[1])
    schedule.on_train_end(args, state, TrainerControl(), model=model)
    assert model.smaller_sizes_scale == 1.0  # after training every size weighs as configured


@pytest.mark.slow
def test_trainer_drives_its_loss_through_a_whole_run(make_model, tmp_path):
    from datasets import Dataset

    from mrl_text import MatryoshkaTrainer, MatryoshkaTrainingArguments

    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(trainer.loss.smaller_sizes_scale)

    data = Dataset.from_dict({"anchor": ["a b", "c d", "e f", "g h"], "positive": ["b a", "d c", "f e", "h g"]})
    args = MatryoshkaTrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4,
                                       report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    schedule = SizeSchedule(smaller_sizes_warmup_fraction=0.8, full_size_only_fraction=0.2)
    trainer = MatryoshkaTrainer(model=make_model(), args=args, train_dataset=data, callbacks=[Record()],
                                size_schedule=schedule)
    trainer.train()
    assert seen == pytest.approx([0.0, 0.5, 0.75, 1.0, 1.0])
    assert trainer.loss.smaller_sizes_scale == 1.0
    assert trainer.model.model_card_data.hyperparameters["smaller_sizes_warmup_fraction"] == 0.8  # on the card


@pytest.mark.slow
def test_callback_ramps_the_mlm_loss_under_a_plain_trainer(tiny_tokenizer, sentences, tmp_path):
    torch.manual_seed(0)
    config = MatryoshkaConfig(encoder=tiny_bert_config(vocab_size=len(tiny_tokenizer)), matryoshka_dimensions=[32, 8],
                              matryoshka_weights=[4.0, 1.0])
    model = MatryoshkaForMaskedLM(config)
    collator = DataCollatorForLanguageModeling(tiny_tokenizer, mlm_probability=0.3)
    batch = collator([tiny_tokenizer(s) for s in sentences])
    model.eval()
    logits = model(**batch).matryoshka_logits
    labels = batch["labels"][batch["labels"] != -100]
    model.smaller_sizes_scale = 0.25  # what the callback sets: only the smaller sizes' weights move
    torch.testing.assert_close(model(**batch).loss, 4.0 * F.cross_entropy(logits[0], labels)
                               + 0.25 * F.cross_entropy(logits[1], labels))

    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(model.smaller_sizes_scale)

    texts = Dataset.from_dict({"input_ids": [tiny_tokenizer(s)["input_ids"] for s in sentences]})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, report_to="none",
                             use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=texts, data_collator=collator,
                      callbacks=[SizeSchedule(smaller_sizes_warmup_fraction=1.0), Record()])
    trainer.train()
    assert seen == [0.25, 0.5, 0.75, 1.0]


def test_schedule_refuses_a_model_without_a_schedule_and_a_bad_fraction(make_model, tmp_path):
    with pytest.raises(ValueError, match="smaller_sizes_warmup_fraction=1.5 must be between 0 and 1"):
        SizeSchedule(smaller_sizes_warmup_fraction=1.5)
    with pytest.raises(ValueError, match="full_size_only_fraction=-0.1 must be between 0 and 1"):
        SizeSchedule(full_size_only_fraction=-0.1)
    schedule = SizeSchedule(smaller_sizes_warmup_fraction=0.5)
    with pytest.raises(ValueError, match=r"MatryoshkaModel has none.*MatryoshkaTrainer\(size_schedule=\.\.\.\)"):
        schedule.on_train_begin(None, None, None, model=make_model())
