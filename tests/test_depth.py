"""2D Matryoshka (depth): layers=k runs only k layers and equals the full pass's layer k, the depth loss and its
detached alignment, training in the trainer, the config field, bad inputs."""

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig

from mrl_text import MatryoshkaConfig, MatryoshkaModel
from mrl_text.losses import InfoNCELoss, MatryoshkaCrossEntropyLoss, MatryoshkaLoss
from mrl_text.losses.depth import MatryoshkaDepthLoss, alignment_loss, similarity_kl_loss
from mrl_text.models.modeling_matryoshka_utils import pool, truncate_embeddings
from mrl_text.training.trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments

from .conftest import launch_two_cpu_processes, tiny_bert_config

PAIRS = {
    "anchor": ["a man plays guitar", "the dog runs", "what is my balance", "hello world", "the sun is big",
               "a cat is sleeping", "bread in the park", "fast red car"],
    "positive": ["a man is playing music", "a dog is running", "account balance please", "hello", "big sun today",
                 "the cat sleeps", "eating bread at the park", "a red car is fast"],
}


def deep_model(tokenizer, model_type="bert", layers=(4, 2), pooling="mean", projection_dim=None, seed=0):
    """A tiny 4-layer encoder of `model_type` wrapped with depths `layers`."""
    encoder = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    config = MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=[projection_dim or 16, 8],
                              matryoshka_layers=list(layers),
                              pooling=pooling, projection_dim=projection_dim)
    model = MatryoshkaModel(config).eval()
    model.tokenizer = tokenizer
    return model


def layer_calls(model):
    """How many times each encoder layer ran (forward hooks)."""
    counts = {}
    distilbert = model.config.encoder.model_type == "distilbert"
    stack = model.encoder.transformer.layer if distilbert else model.encoder.encoder.layer
    for index, layer in enumerate(stack):
        counts[index + 1] = 0
        layer.register_forward_hook(lambda *_, i=index + 1: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet", "distilbert"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_layers_k_equals_the_full_pass_layer_k_and_skips_the_rest(tiny_tokenizer, model_type, pooling):
    model = deep_model(tiny_tokenizer, model_type, layers=(4, 3, 2, 1), pooling=pooling)
    inputs = tiny_tokenizer(["a man plays guitar", "hello"], padding=True, return_tensors="pt")
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)
    assert len(full.hidden_states) == 5  # embeddings + 4 layers
    counts = layer_calls(model)
    for k in (1, 2, 3):
        with torch.no_grad():
            out = model(**inputs, dim=8, layers=k)
        expected = truncate_embeddings(pool(full.hidden_states[k], inputs["attention_mask"], pooling), 8)
        torch.testing.assert_close(out.embeddings, expected, rtol=1e-5, atol=1e-6)
        assert [counts[i] for i in (1, 2, 3, 4)] == [1] * k + [0] * (4 - k)  # layers after k never ran
        counts.update({i: 0 for i in counts})
    assert len(model.encoder.get_submodule("transformer" if model_type == "distilbert" else "encoder").layer) == 4
    encoded = model.encode(["a man plays guitar", "hello"], dim=8, layers=2)
    torch.testing.assert_close(encoded, truncate_embeddings(
        pool(full.hidden_states[2], inputs["attention_mask"], pooling), 8), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.encode(["hello"], layers=None), model.encode(["hello"]))


def test_layer_embeddings_come_from_the_same_pass(tiny_tokenizer):
    model = deep_model(tiny_tokenizer, projection_dim=24)
    inputs = tiny_tokenizer(["the dog runs", "a cat"], padding=True, return_tensors="pt")
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    out = model(**inputs, output_layer_embeddings=[2, 4])
    assert len(calls) == 1 and set(out.layer_embeddings) == {2, 4}
    torch.testing.assert_close(out.layer_embeddings[4], out.full_embeddings)
    with torch.no_grad():
        shallow = model(**inputs, layers=2).full_embeddings
    torch.testing.assert_close(out.layer_embeddings[2], shallow, rtol=1e-5, atol=1e-6)  # projected like the final
    with pytest.raises(ValueError, match="this pass ran 2 layers, so depths must be integers in 1..2"):
        model(**inputs, layers=2, output_layer_embeddings=[3])


def test_alignment_target_is_detached():
    earlier = torch.randn(4, 8, requires_grad=True)
    final = torch.randn(4, 8, requires_grad=True)
    alignment_loss(earlier, final).backward()
    assert earlier.grad is not None and earlier.grad.abs().sum() > 0
    assert final.grad is None  # the final layer is the target: no gradient pulls it towards a shallower layer

    # Through the wrapper: the depth terms leave the final embeddings' gradient exactly as the final loss alone.
    base = MatryoshkaLoss(InfoNCELoss(), [8, 4])
    depth = MatryoshkaDepthLoss(base, [4, 2], alignment_weight=5.0)
    torch.manual_seed(0)
    tensors = [torch.randn(4, 8, requires_grad=True) for _ in range(4)]  # final a, p; layer-2 a, p
    assert depth.layers_for_step() == [2]
    depth(tensors).backward()
    alone = [t.detach().clone().requires_grad_() for t in tensors[:2]]
    base(alone).backward()
    for with_depth, without in zip(tensors[:2], alone):
        torch.testing.assert_close(with_depth.grad, without.grad)
    assert all(t.grad.abs().sum() > 0 for t in tensors[2:])


def test_similarity_kl_alignment_ranks_the_batch_like_the_detached_final_layer():
    torch.manual_seed(0)
    final = torch.randn(6, 8, requires_grad=True)
    # Zero when the earlier layer ranks the batch as the final one does, whatever its scale; positive otherwise.
    assert similarity_kl_loss(3.0 * final.detach(), final).item() < 1e-6
    earlier = torch.randn(6, 8, requires_grad=True)
    value = similarity_kl_loss(earlier, final, temperature=0.1)
    assert value.item() > 0.01
    value.backward()
    assert earlier.grad.abs().sum() > 0 and final.grad is None  # the final layer is the target
    assert similarity_kl_loss(torch.randn(2, 8), torch.randn(2, 8)).item() == 0.0  # one neighbour: nothing to rank

    # In the wrapper: every column's texts form one batch, and the final embeddings get the final loss's gradient only.
    base = MatryoshkaLoss(InfoNCELoss(), [8, 4])
    depth = MatryoshkaDepthLoss(base, [4, 2], alignment_weight=2.0, alignment="similarity_kl",
                                alignment_temperature=0.1)
    tensors = [torch.randn(4, 8, requires_grad=True) for _ in range(4)]  # final a, p; layer-2 a, p
    depth.step_layers = [2]
    expected = base(tensors[:2]) + base(tensors[2:]) + 2.0 * similarity_kl_loss(
        torch.cat(tensors[2:]), torch.cat(tensors[:2]), temperature=0.1)
    torch.testing.assert_close(depth.forward(tensors), expected)
    assert depth.get_config_dict()["alignment"] == "similarity_kl"
    for bad, message in (({"alignment": "kl"}, "alignment='kl': choose one of cosine, similarity_kl"),
                         ({"alignment_temperature": 0.0}, "alignment_temperature=0.0 must be a finite number > 0")):
        with pytest.raises(ValueError, match=message):
            MatryoshkaDepthLoss(base, [4, 2], **bad)


def test_the_size_schedule_reaches_the_wrapped_loss_through_the_depth_loss():
    base = MatryoshkaLoss(InfoNCELoss(), [8, 4])
    depth = MatryoshkaDepthLoss(base, [4, 2], alignment_weight=0.0)
    assert hasattr(depth, "smaller_sizes_scale")
    assert not hasattr(MatryoshkaDepthLoss(InfoNCELoss(), [4, 2]), "smaller_sizes_scale")
    torch.manual_seed(2)
    final, earlier = [torch.randn(4, 8) for _ in range(2)], [torch.randn(4, 8) for _ in range(2)]
    depth.smaller_sizes_scale = 0.0  # what a SizeSchedule sets during full_size_only_fraction: full size, every depth
    assert base.smaller_sizes_scale == 0.0
    depth.layers_for_step()
    full_only = MatryoshkaLoss(InfoNCELoss(), [8])
    torch.testing.assert_close(depth(final + earlier), full_only(final) + full_only(earlier))


def test_depth_loss_is_the_weighted_sum_of_its_terms():
    base = MatryoshkaLoss(InfoNCELoss(), [8, 4])
    depth = MatryoshkaDepthLoss(base, [2, 4, 3], layer_weights=[0.5, 2.0, 0.0], alignment_weight=0.3,
                                n_layers_per_step=1, alignment="cosine")
    assert depth.matryoshka_layers == [4, 3, 2] and depth.layer_weights == [2.0, 0.0, 0.5]
    torch.manual_seed(1)
    final, earlier = [torch.randn(4, 8) for _ in range(2)], [torch.randn(4, 8) for _ in range(2)]
    depth.step_layers = [2]
    expected = 2.0 * base(final) + 0.5 * (base(earlier) + 0.3 * (alignment_loss(earlier[0], final[0])
                                                                  + alignment_loss(earlier[1], final[1])) / 2)
    torch.testing.assert_close(depth(final + earlier), expected)
    torch.testing.assert_close(depth(final), 2.0 * base(final))  # nothing sampled: the final layer alone
    assert {depth.layers_for_step()[0] for _ in range(40)} == {3, 2}  # never the full depth

    # Several depths per step: their terms are averaged (n_layers_per_step changes the variance, not the weight);
    # -1 trains every earlier depth each step.
    every = MatryoshkaDepthLoss(base, [4, 3, 2], layer_weights=[1.0, 2.0, 0.5], n_layers_per_step=-1,
                                alignment_weight=0.0)
    assert every.layers_for_step() == [3, 2]
    middle = [torch.randn(4, 8) for _ in range(2)]
    torch.testing.assert_close(every(final + middle + earlier),
                               base(final) + (2.0 * base(middle) + 0.5 * base(earlier)) / 2)


@pytest.mark.slow
def test_depth_trains_in_the_trainer_with_one_encoder_pass_and_every_parameter_used(tiny_tokenizer, tmp_path):
    model = deep_model(tiny_tokenizer, layers=(4, 3, 1))
    args = MatryoshkaTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )
    loss = MatryoshkaDepthLoss.from_config(model.config, MatryoshkaLoss.from_config(model.config, InfoNCELoss()),
                                           layer_weights=[1.0, 1.0, 0.5], alignment="similarity_kl")
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PAIRS), loss=loss)
    assert trainer.loss is loss and trainer.loss.get_config_dict()["matryoshka_layers"] == [4, 3, 1]
    before = model.encode(PAIRS["anchor"], layers=1)
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    assert trainer.train().training_loss > 0
    assert len(calls) == 3 * 2  # one pass per text column per step: depth adds no encoder pass
    calls.clear()
    assert not torch.allclose(model.encode(PAIRS["anchor"], layers=1), before)

    # Under DDP (find_unused_parameters=False) every parameter must take part in the loss: check one step's grads.
    model.train().zero_grad()
    batch = trainer.data_collator([{key: PAIRS[key][i] for key in PAIRS} for i in range(4)])
    trainer.compute_loss(model, batch).backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused


def test_config_round_trip_and_validation(tiny_tokenizer, tmp_path):
    model = deep_model(tiny_tokenizer, layers=(2, 4))
    assert model.config.matryoshka_layers == [4, 2]
    model.save_pretrained(tmp_path / "saved")
    loaded = MatryoshkaModel.from_pretrained(tmp_path / "saved")
    assert loaded.config.matryoshka_layers == [4, 2]
    torch.testing.assert_close(loaded.encode(["hello world"], layers=2), model.encode(["hello world"], layers=2))
    assert MatryoshkaConfig(encoder=tiny_bert_config()).matryoshka_layers is None
    with pytest.warns(UserWarning, match="lacks the full depth 2; adding it"):
        assert MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_layers=[1]).matryoshka_layers == [2, 1]
    for bad, message in (([3], r"holds 3; every depth must be an integer in 1\.\.2"), ([0], "holds 0"),
                         ([1.5], "holds 1.5"), ([], "is empty"), ([2, 2], "repeats")):
        with pytest.raises(ValueError, match=message):
            MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_layers=bad)


def test_bad_layers_give_clear_errors(tiny_tokenizer, make_model):
    model = deep_model(tiny_tokenizer, layers=(4, 2))
    for bad, message in ((5, r"layers=5 is out of range: the encoder has 4 layers"), (0, "out of range"),
                         (2.0, "is not an integer"), ("2", "is not an integer"), (True, "is not an integer")):
        with pytest.raises(ValueError, match=message):
            model.encode(["hello"], layers=bad)
    with pytest.warns(UserWarning, match=r"layers=3 is not one of the trained depths \[4, 2\]") as caught:
        model.encode(["hello"], layers=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per depth
        model.encode(["hello"], layers=3)
    assert len(caught) == 1
    full_only = make_model()  # no matryoshka_layers: only full depth is trained
    with pytest.warns(UserWarning, match=r"trained depths \[2\]"):
        full_only.encode(["hello"], layers=1)
    with pytest.raises(ValueError, match="at least one depth below the full one"):
        MatryoshkaDepthLoss.from_config(full_only.config, MatryoshkaLoss(InfoNCELoss(), [32]))
    for bad in (2, 0, -2, True):
        with pytest.raises(ValueError, match=rf"n_layers_per_step={bad} must be an integer in 1..1, or -1 for every"):
            MatryoshkaDepthLoss(InfoNCELoss(), [4, 2], n_layers_per_step=bad)
    with pytest.raises(ValueError, match="layer_weights"):
        MatryoshkaDepthLoss(InfoNCELoss(), [4, 2], layer_weights=[1.0])
    classifier = SimpleNamespace(matryoshka_loss=None)
    with pytest.raises(ValueError, match="MatryoshkaCrossEntropyLoss trains a classifier's nested heads"):
        MatryoshkaDepthLoss(MatryoshkaCrossEntropyLoss(classifier), [4, 2])
    with pytest.raises(ValueError, match="got 3 tensors for 2 depths"):
        depth = MatryoshkaDepthLoss(InfoNCELoss(), [4, 2])
        depth.layers_for_step()
        depth([torch.randn(2, 4)] * 3)


def test_unsupported_encoder_types_are_refused(tiny_tokenizer):
    from transformers import ModernBertConfig

    encoder = ModernBertConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                               pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)
    model = MatryoshkaModel(MatryoshkaConfig(encoder=encoder)).eval()
    model.tokenizer = tiny_tokenizer
    with pytest.raises(ValueError, match=r"supports encoders of types .*this model wraps 'modernbert'"):
        model.encode(["hello"], layers=1)
    assert model.encode(["hello"], layers=None).shape == (1, 16)


@pytest.mark.slow
def test_recipe_trains_depth_and_saves_the_depths(tmp_path):
    from transformers import BertModel

    from .conftest import build_tokenizer, load_module

    recipe = load_module(Path(__file__).resolve().parents[1] / "recipes" / "train_bert.py")
    encoder_dir = tmp_path / "tiny-bert"
    tokenizer = build_tokenizer(encoder_dir)
    BertModel(tiny_bert_config(vocab_size=len(tokenizer))).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    out = tmp_path / "out"
    recipe.main([
        "--model_name_or_path", str(encoder_dir), "--output_dir", str(out), "--max_steps", "2",
        "--max_train_samples", "40", "--per_device_train_batch_size", "8", "--use_cpu", "true",
        "--disable_tqdm", "true", "--general_check", "false", "--matryoshka_depth", "true",
    ])
    model = MatryoshkaModel.from_pretrained(out)
    assert model.config.matryoshka_layers == [2, 1]  # every depth by default
    assert model.encode(["hello"], dim=16, layers=1).shape == (1, 16)
    saved = json.loads((out / "model_card_data.json").read_text())
    assert "matryoshka_layers" in json.dumps(saved["loss"])
    options, _ = recipe.parse_arguments(["--matryoshka_depth", "true", "--layer_weights", "1", "0.5"])
    assert options.matryoshka_depth and options.layer_weights == [1.0, 0.5]


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not installed")
def test_depth_trains_under_two_process_ddp(tmp_path):
    script = Path(__file__).with_name("ddp_depth.py")
    launch_two_cpu_processes(script, tmp_path / "ddp.json", port=29523)
    assert json.loads((tmp_path / "ddp.json").read_text()) == {"world_size": 2, "steps": 4}
