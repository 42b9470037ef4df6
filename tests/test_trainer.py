"""MatryoshkaTrainer on tiny random models: loss objects of every family, one encoder pass per column, checkpoints,
resume, errors."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModel, BertModel

from mrl_text import MatryoshkaConfig, MatryoshkaForSequenceClassification
from mrl_text.losses import (
    CoSENTLoss,
    DistillMSELoss,
    InfoNCELoss,
    MatryoshkaCrossEntropyLoss,
    MatryoshkaDepthLoss,
    MatryoshkaLoss,
)
from mrl_text.training.trainer import (
    MatryoshkaDataCollator,
    MatryoshkaTrainer,
    MatryoshkaTrainingArguments,
    classification_compute_metrics,
)

from .conftest import build_tokenizer, tiny_bert_config

PAIRS = {
    "anchor": ["a man plays guitar", "the dog runs", "what is my balance", "hello world", "the sun is big",
               "a cat is sleeping", "bread in the park", "fast red car"],
    "positive": ["a man is playing music", "a dog is running", "account balance please", "hello", "big sun today",
                 "the cat sleeps", "eating bread at the park", "a red car is fast"],
}


def training_args(tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
    )
    options.update(overrides)
    return MatryoshkaTrainingArguments(**options)


def count_encoder_calls(model):
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def make_classifier(tokenizer, dims=(32, 8), num_labels=2, **config_kwargs):
    torch.manual_seed(0)
    config = MatryoshkaConfig(encoder=tiny_bert_config(vocab_size=len(tokenizer)), matryoshka_dimensions=list(dims),
                              num_labels=num_labels, **config_kwargs)
    model = MatryoshkaForSequenceClassification(config)
    model.tokenizer = tokenizer
    return model


LAYOUTS = {  # base loss -> (rows, text columns)
    "infonce": ({**PAIRS, "negative": list(reversed(PAIRS["positive"]))}, 3),
    "cosent": ({"sentence1": PAIRS["anchor"], "sentence2": PAIRS["positive"], "score": [5, 4, 3, 1, 2, 4, 3, 1]}, 2),
    "cross_entropy": ({"text": PAIRS["anchor"], "label": [0, 1] * 4}, 1),
    "distill_mse": ({"text": PAIRS["anchor"]}, 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("loss", list(LAYOUTS))
@pytest.mark.parametrize("dims", [(32,), (32, 16, 8, 4, 2)])
def test_encoder_runs_once_per_text_column_whatever_the_number_of_sizes(make_model, tiny_tokenizer, tmp_path, loss,
                                                                       dims):
    rows, text_columns = LAYOUTS[loss]
    classifier = loss == "cross_entropy"
    model = make_classifier(tiny_tokenizer, dims) if classifier else make_model(matryoshka_dimensions=dims)
    calls = count_encoder_calls(model.matryoshka if classifier else model)
    teacher = make_model(seed=1) if loss == "distill_mse" else None
    teacher_calls = count_encoder_calls(teacher) if teacher is not None else []
    base = {"infonce": InfoNCELoss(), "cosent": CoSENTLoss(), "distill_mse": DistillMSELoss(teacher=teacher)}.get(loss)
    # None: the classifier's own loss, its default
    loss_object = None if base is None else MatryoshkaLoss.from_config(model.config, base)
    args = training_args(tmp_path, max_steps=2)
    MatryoshkaTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss_object).train()
    assert len(calls) == 2 * text_columns  # 2 steps x the text columns, independent of len(dims)
    assert len(teacher_calls) == (2 if teacher is not None else 0)  # the teacher too: once per step, not per size


def test_trainer_loss_matches_matryoshka_loss_on_the_batch(make_model, tmp_path):
    model = make_model(matryoshka_dimensions=(32, 8), matryoshka_weights=[1.0, 3.0])
    trainer = MatryoshkaTrainer(model=model, args=training_args(tmp_path), train_dataset=Dataset.from_dict(PAIRS))
    batch = trainer.data_collator([{"anchor": a, "positive": p} for a, p in zip(PAIRS["anchor"], PAIRS["positive"])])
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        a = model(**{k.split(".")[1]: v for k, v in batch.items() if k.startswith("anchor.")}).full_embeddings
        p = model(**{k.split(".")[1]: v for k, v in batch.items() if k.startswith("positive.")}).full_embeddings
    base = trainer.loss.base_loss
    norm = torch.nn.functional.normalize
    expected = base([norm(a), norm(p)]) + 3.0 * base([norm(a[:, :8]), norm(p[:, :8])])
    torch.testing.assert_close(loss, expected)


@pytest.mark.slow
def test_training_lowers_the_loss_and_checkpoints_load(make_model, tmp_path):
    model = make_model(matryoshka_dimensions=(32, 16, 8))
    data = Dataset.from_dict(PAIRS)
    args = training_args(tmp_path, max_steps=12, save_strategy="steps", save_steps=12, per_device_train_batch_size=8)
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=data)
    batch = trainer.data_collator([data[i] for i in range(8)])
    with torch.no_grad():
        before = trainer.compute_loss(model.eval(), batch).item()
    trainer.train()
    with torch.no_grad():
        after = trainer.compute_loss(model.eval(), batch).item()
    assert after < before
    loaded = AutoModel.from_pretrained(tmp_path / "run" / "checkpoint-12")
    assert loaded.config.matryoshka_dimensions == [32, 16, 8]
    torch.testing.assert_close(loaded.encode(PAIRS["anchor"], dim=8), model.encode(PAIRS["anchor"], dim=8))


@pytest.mark.slow
def test_resume_from_checkpoint_reaches_the_same_weights(make_model, tmp_path):
    data = Dataset.from_dict(PAIRS)
    # Dropout is on and sizes are sampled per step: the RNG state must be restored too.
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, per_device_train_batch_size=4)

    def sampled(model):
        return MatryoshkaLoss.from_config(model.config, InfoNCELoss(), n_dims_per_step=2)

    straight = make_model(matryoshka_dimensions=(32, 16, 8, 4))
    MatryoshkaTrainer(model=straight, args=training_args(tmp_path, **common), train_dataset=data,
                      loss=sampled(straight)).train()
    resumed = make_model(matryoshka_dimensions=(32, 16, 8, 4))
    args = training_args(tmp_path, output_dir=str(tmp_path / "resumed"), **common)
    MatryoshkaTrainer(model=resumed, args=args, train_dataset=data, loss=sampled(resumed)).train(
        resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3")
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    untrained = make_model(matryoshka_dimensions=(32, 16, 8, 4))
    assert not torch.equal(untrained.encoder.embeddings.word_embeddings.weight,
                           straight.encoder.embeddings.word_embeddings.weight)


def trains(trainer, batch_rows):
    """The trainer's loss on a fixed batch before and after `train()` (eval mode: no dropout), and whether every
    trainable parameter's values changed somewhere."""
    model = trainer.model
    batch = trainer.data_collator(batch_rows)
    before_weights = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        before = trainer.compute_loss(model.eval(), batch).item()
    trainer.train()
    with torch.no_grad():
        after = trainer.compute_loss(model.eval(), batch).item()
    after_weights = [p for p in model.parameters() if p.requires_grad]
    moved = any(not torch.equal(a, b) for a, b in zip(before_weights, after_weights))
    return before, after, moved


def test_default_loss_is_infonce_at_every_size_of_the_config(make_model, tmp_path):
    model = make_model(matryoshka_dimensions=(32, 16, 8), matryoshka_weights=[2.0, 1.0, 1.0])
    trainer = MatryoshkaTrainer(model=model, args=training_args(tmp_path), train_dataset=Dataset.from_dict(PAIRS))
    assert isinstance(trainer.loss, MatryoshkaLoss) and isinstance(trainer.loss.base_loss, InfoNCELoss)
    assert trainer.loss.matryoshka_dimensions == [32, 16, 8] and trainer.loss.matryoshka_weights == [2.0, 1.0, 1.0]
    classifier = make_classifier(model.tokenizer)
    labelled = Dataset.from_dict({"text": PAIRS["anchor"], "label": [0, 1] * 4})
    own = MatryoshkaTrainer(model=classifier, args=training_args(tmp_path), train_dataset=labelled).loss
    assert isinstance(own, MatryoshkaCrossEntropyLoss) and own.model is classifier


@pytest.mark.slow
def test_infonce_loss_object_with_its_options_trains(make_model, tmp_path):
    model = make_model(matryoshka_dimensions=(32, 16, 8))
    loss = MatryoshkaLoss.from_config(model.config, InfoNCELoss(scale=10.0, symmetric=True), n_dims_per_step=2)
    trainer = MatryoshkaTrainer(model=model, args=training_args(tmp_path, max_steps=10, per_device_train_batch_size=8),
                                train_dataset=Dataset.from_dict(PAIRS), loss=loss)
    assert trainer.loss is loss
    before, after, moved = trains(trainer, [{"anchor": a, "positive": p} for a, p in zip(*PAIRS.values())])
    assert moved and after < before


@pytest.mark.slow
def test_cosent_loss_object_trains(make_model, tmp_path):
    scored = Dataset.from_dict({"sentence1": PAIRS["anchor"], "sentence2": PAIRS["positive"],
                                "score": [5.0, 4.0, 3.0, 1.0, 2.5, 4.5, 3.5, 0.5]})
    model = make_model(matryoshka_dimensions=(32, 8))
    trainer = MatryoshkaTrainer(model=model, args=training_args(tmp_path, max_steps=10, per_device_train_batch_size=8),
                                train_dataset=scored,
                                loss=MatryoshkaLoss.from_config(model.config, CoSENTLoss(scale=20.0)))
    before, after, moved = trains(trainer, [scored[i] for i in range(8)])
    assert moved and after < before


@pytest.mark.slow
def test_classifier_trains_on_its_default_matryoshka_cross_entropy(tiny_tokenizer, tmp_path):
    model = make_classifier(tiny_tokenizer, dims=(32, 16, 8), num_labels=2)
    labelled = Dataset.from_dict({"text": PAIRS["anchor"], "label": [0, 1] * 4})
    trainer = MatryoshkaTrainer(model=model, args=training_args(tmp_path, max_steps=10, per_device_train_batch_size=8),
                                train_dataset=labelled)
    assert isinstance(trainer.loss, MatryoshkaCrossEntropyLoss)
    before, after, moved = trains(trainer, [labelled[i] for i in range(8)])
    assert moved and after < before


@pytest.mark.slow
def test_depth_loss_object_trains_every_depth(tmp_path, tiny_tokenizer):
    from mrl_text import MatryoshkaModel

    torch.manual_seed(0)
    config = MatryoshkaConfig(encoder=tiny_bert_config(vocab_size=len(tiny_tokenizer)), matryoshka_dimensions=[32, 8],
                              matryoshka_layers=[2, 1])
    model = MatryoshkaModel(config)
    model.tokenizer = tiny_tokenizer
    every_size = MatryoshkaLoss.from_config(config, InfoNCELoss())
    loss = MatryoshkaDepthLoss.from_config(config, every_size, alignment="cosine")
    trainer = MatryoshkaTrainer(model=model, args=training_args(tmp_path, max_steps=10, per_device_train_batch_size=8),
                                train_dataset=Dataset.from_dict(PAIRS), loss=loss)
    before, after, moved = trains(trainer, [{"anchor": a, "positive": p} for a, p in zip(*PAIRS.values())])
    assert moved and after < before


@pytest.mark.slow
def test_cross_entropy_trains_nested_heads_and_checks_labels(tiny_tokenizer, tmp_path):
    model = make_classifier(tiny_tokenizer, efficient_heads=True)
    labelled = Dataset.from_dict({"text": PAIRS["anchor"], "label": [0, 1] * 4})
    args = training_args(tmp_path)
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=labelled)
    # The model computes its own Matryoshka cross-entropy from the labels; the trainer's loss is that one.
    batch = trainer.data_collator([labelled[i] for i in range(8)])
    with torch.no_grad():
        text = {k.split(".")[1]: v for k, v in batch.items() if k.startswith("text.")}
        own = model.eval()(**text, labels=batch["labels"])
        torch.testing.assert_close(trainer.compute_loss(model, batch), own.loss)
    assert trainer.train().training_loss > 0
    as_floats = Dataset.from_dict({"text": PAIRS["anchor"], "label": [0.0, 1.0] * 4})  # class ids read from a csv
    assert MatryoshkaTrainer(model=model, args=args, train_dataset=as_floats).train().training_loss > 0
    bad = Dataset.from_dict({"text": PAIRS["anchor"], "label": [0, 1, 2, 0, 1, 0, 1, 0]})
    with pytest.raises(ValueError, match="Label 2 is out of range for num_labels=2"):
        MatryoshkaTrainer(model=model, args=args, train_dataset=bad).train()
    with pytest.raises(ValueError, match="InfoNCELoss trains embeddings; use a MatryoshkaModel"):
        MatryoshkaTrainer(model=model, args=training_args(tmp_path), train_dataset=Dataset.from_dict(PAIRS),
                          loss=InfoNCELoss())


@pytest.mark.slow
def test_compute_metrics_reports_accuracy_at_every_size(tiny_tokenizer, tmp_path):
    model = make_classifier(tiny_tokenizer, dims=(32, 16, 8))
    labelled = Dataset.from_dict({"text": PAIRS["anchor"] + PAIRS["positive"], "label": [0, 1] * 8})
    args = training_args(tmp_path, eval_strategy="steps", eval_steps=2, max_steps=4,
                         per_device_eval_batch_size=5)  # 16 rows: batches of 5 are gathered across steps
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=labelled, eval_dataset=labelled,
                                compute_metrics=classification_compute_metrics(model.config.matryoshka_dimensions))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all({f"eval_classification_accuracy_{d}" for d in (32, 16, 8)} <= set(entry) for entry in logged)
    metrics = trainer.evaluate()
    model.eval()
    inputs = tiny_tokenizer(list(labelled["text"]), padding=True, return_tensors="pt")
    for dim in (32, 16, 8):
        with torch.no_grad():
            predicted = model(**inputs, dim=dim).logits.argmax(-1)
        expected = (predicted == torch.tensor(list(labelled["label"]))).float().mean().item()
        assert metrics[f"eval_classification_accuracy_{dim}"] == pytest.approx(expected)


@pytest.mark.slow
def test_distill_mse_moves_student_towards_teacher(make_model, tmp_path):
    teacher = make_model(seed=1)
    teacher.tokenizer = build_tokenizer(tmp_path / "teacher-tokenizer")  # its own tokenizer: inputs tokenized twice
    student = make_model(seed=2)
    texts = Dataset.from_dict({"text": PAIRS["anchor"] + PAIRS["positive"]})
    args = training_args(tmp_path, max_steps=15, per_device_train_batch_size=16)

    def distance():
        return ((student.encode(texts["text"], dim=8) - teacher.encode(texts["text"], dim=8)) ** 2).sum().item()

    before = distance()
    loss = MatryoshkaLoss.from_config(student.config, DistillMSELoss(teacher=teacher))  # the teacher is the loss's
    trainer = MatryoshkaTrainer(model=student, args=args, train_dataset=texts, loss=loss)
    assert trainer.data_collator.teacher_tokenizer is teacher.tokenizer  # the teacher's own tokenizer, via the loss
    trainer.train()
    assert distance() < before


def test_distill_mse_reads_precomputed_teacher_embeddings_from_the_label_column(make_model, tmp_path):
    teacher, student = make_model(seed=1), make_model(seed=2)
    texts = PAIRS["anchor"] + PAIRS["positive"]
    rows = Dataset.from_dict({"text": texts, "label": teacher.encode(texts).tolist()})  # full size, not normalized
    distill = MatryoshkaLoss.from_config(student.config, DistillMSELoss())
    trainer = MatryoshkaTrainer(model=student, args=training_args(tmp_path), train_dataset=rows, loss=distill)
    batch = trainer.data_collator([rows[i] for i in range(4)])
    with torch.no_grad():
        text = {k.split(".")[1]: v for k, v in batch.items() if k.startswith("text.")}
        student_full = student(**text).full_embeddings
        fresh = MatryoshkaLoss.from_config(student.config, DistillMSELoss())  # not the trainer's own object
        expected = fresh([student_full], batch["labels"].float())
        torch.testing.assert_close(trainer.compute_loss(student, batch), expected)
    with pytest.raises(ValueError, match="label column"):
        MatryoshkaTrainer(model=student, args=training_args(tmp_path),
                          train_dataset=Dataset.from_dict({"text": texts}), loss=distill)
    with pytest.raises(TypeError, match=r"no teacher=; use loss=MatryoshkaLoss\(DistillMSELoss\(teacher="):
        MatryoshkaTrainer(model=student, args=training_args(tmp_path), train_dataset=Dataset.from_dict(PAIRS),
                          teacher=teacher)
    with pytest.raises(TypeError, match="no loss_fn=; use loss="):
        MatryoshkaTrainer(model=student, args=training_args(tmp_path), train_dataset=Dataset.from_dict(PAIRS),
                          loss_fn=distill)


def test_collator_tokenizes_each_text_column(tiny_tokenizer):
    collate = MatryoshkaDataCollator(tiny_tokenizer, max_seq_length=4)
    batch = collate([{"sentence1": "a man is playing a guitar today", "sentence2": "hello", "score": 4},
                     {"sentence1": "hi", "sentence2": "the dog", "score": 1}])
    assert batch["sentence1.input_ids"].shape == (2, 4)  # truncated to max_seq_length
    assert batch["sentence2.attention_mask"].shape[0] == 2
    assert batch["labels"].tolist() == [4, 1]
    with pytest.raises(ValueError, match="Column 'sentence2' holds int"):
        collate([{"sentence1": "a", "sentence2": 3}])
    with pytest.raises(ValueError, match="holds the string 'pay'.*load_labelled_text"):
        collate([{"text": "a", "label": "pay"}])


def test_bad_inputs_give_clear_errors(make_model, tiny_tokenizer, tmp_path):
    data = Dataset.from_dict(PAIRS)
    args = training_args(tmp_path)
    bert = BertModel(tiny_bert_config(vocab_size=len(tiny_tokenizer)))
    with pytest.raises(ValueError, match="MatryoshkaModel.from_encoder"):
        MatryoshkaTrainer(model=bert, args=args, train_dataset=data)
    with pytest.raises(ValueError, match=r"loss='infonce' is a name; pass a loss object, e.g. loss=MatryoshkaLoss"):
        MatryoshkaTrainer(model=make_model(), args=args, train_dataset=data, loss="infonce")
    with pytest.raises(ValueError, match="pass mrl_text.training.SizeSchedule"):
        MatryoshkaTrainer(model=make_model(), args=args, train_dataset=data, size_schedule=0.5)
    with pytest.raises(ValueError, match="needs at least 2 text column"):
        MatryoshkaTrainer(model=make_model(), args=args, train_dataset=Dataset.from_dict({"anchor": PAIRS["anchor"]}))
    with pytest.raises(ValueError, match=r"MatryoshkaLoss\(CoSENTLoss\) needs a label column"):
        MatryoshkaTrainer(model=make_model(), args=args, train_dataset=data, loss=MatryoshkaLoss(CoSENTLoss(), [32]))
    with pytest.raises(ValueError, match="no rows"):
        empty = Dataset.from_dict({"anchor": [], "positive": []})
        MatryoshkaTrainer(model=make_model(), args=args, train_dataset=empty)
    with pytest.raises(ValueError, match="MatryoshkaTrainingArguments"):
        from transformers import TrainingArguments

        MatryoshkaTrainer(model=make_model(), args=TrainingArguments(output_dir=str(tmp_path)), train_dataset=data)


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_number(make_model, tmp_path):
    model = make_model()
    args = training_args(tmp_path, max_steps=3)
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PAIRS))
    original = trainer.compute_loss
    state = {"calls": 0}

    def poisoned(model, inputs, **kwargs):
        state["calls"] += 1
        if state["calls"] == 2:  # the second step's weights go bad
            with torch.no_grad():
                model.encoder.embeddings.word_embeddings.weight.fill_(float("nan"))
        return original(model, inputs, **kwargs)

    trainer.compute_loss = poisoned
    with pytest.raises(FloatingPointError, match="at step 2"):
        trainer.train()


@pytest.mark.slow
def test_evaluation_during_training_logs_every_size(make_model, tmp_path):
    from mrl_text.evaluation import STSEvaluator

    model = make_model(matryoshka_dimensions=(32, 16, 8))
    sts = STSEvaluator(PAIRS["anchor"], PAIRS["positive"], [5, 4, 3, 1, 2, 4, 3, 1], name="stsb")
    args = training_args(tmp_path, eval_strategy="steps", eval_steps=2, max_steps=4)
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PAIRS), evaluators=[sts])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "eval_stsb_spearman_8" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert {"eval_stsb_spearman_32", "eval_stsb_spearman_16", "eval_stsb_pearson_8"} <= set(logged[-1])
    metrics = trainer.evaluate()
    direct = {(row["metric"], row["dim"]): row["value"] for row in sts.evaluate(model)}
    assert metrics["eval_stsb_spearman_16"] == pytest.approx(direct["spearman", 16])


def test_eval_dataset_loss_and_evaluators_reported_together(make_model, tmp_path):
    from transformers import TrainerCallback

    from mrl_text.evaluation import STSEvaluator

    reported = []

    class Record(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            reported.append(dict(metrics))

    sts = STSEvaluator(PAIRS["anchor"], PAIRS["positive"], [5, 4, 3, 1, 2, 4, 3, 1], name="stsb")
    trainer = MatryoshkaTrainer(
        model=make_model(matryoshka_dimensions=(32, 8)), args=training_args(tmp_path), callbacks=[Record()],
        train_dataset=Dataset.from_dict(PAIRS), eval_dataset=Dataset.from_dict(PAIRS), evaluators=[sts],
    )
    metrics = trainer.evaluate()
    assert len(reported) == 1 and {"eval_loss", "eval_stsb_spearman_8"} <= set(reported[0])
    assert metrics["eval_loss"] > 0 and "eval_stsb_spearman_32" in metrics


def test_classification_heads_learn_at_their_own_rate_by_default(make_model, tiny_tokenizer, tmp_path):
    """A classifier's heads get `DEFAULT_HEAD_LEARNING_RATE` scaled by sqrt(full / d), the encoder keeps
    `learning_rate`; an embedding model keeps one rate unless `head_learning_rate` is set."""
    import math

    from mrl_text.training.optimization import DEFAULT_HEAD_LEARNING_RATE

    model = make_classifier(tiny_tokenizer, dims=(32, 16, 8))
    labelled = Dataset.from_dict({"text": PAIRS["anchor"], "label": [0, 1] * 4})
    trainer = MatryoshkaTrainer(model=model, args=training_args(tmp_path, learning_rate=1e-4), train_dataset=labelled)
    rates = sorted({round(group["lr"], 9) for group in trainer.create_optimizer().param_groups})
    heads = {round(DEFAULT_HEAD_LEARNING_RATE * math.sqrt(32 / d), 9) for d in (32, 16, 8)}
    assert 1e-4 in rates and heads <= set(rates), rates
    embedder = MatryoshkaTrainer(model=make_model(), args=training_args(tmp_path, learning_rate=1e-4),
                                 train_dataset=Dataset.from_dict(PAIRS))
    assert {group["lr"] for group in embedder.create_optimizer().param_groups} == {1e-4}


def test_training_arguments_hold_only_training_and_name_the_new_home_of_moved_options(tmp_path):
    import dataclasses

    from transformers import TrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    added = [f.name for f in dataclasses.fields(MatryoshkaTrainingArguments) if f.name not in inherited]
    assert len(added) <= 6, added
    for old, new in (("loss", r"MatryoshkaTrainer\(loss=MatryoshkaLoss.from_config"),
                     ("loss_scale", r"InfoNCELoss\(scale="),
                     ("smaller_sizes_warmup_fraction", r"size_schedule=SizeSchedule\(smaller_sizes_warmup_fraction="),
                     ("matryoshka_depth", r"MatryoshkaDepthLoss.from_config")):
        with pytest.raises(TypeError, match=f"no longer takes {old}: .*{new}"):
            training_args(tmp_path, **{old: 1})


def test_no_pinned_memory_without_an_accelerator(tmp_path):
    """Pinned memory only helps copies to an accelerator; on CPU torch warns about it on every run."""
    assert training_args(tmp_path).dataloader_pin_memory is False
