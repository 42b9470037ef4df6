"""Cached (GradCache) training: the gradients of a step in mini-batches equal the full-batch step's (float64, 1e-6),
for every size weighting, with dropout replayed, under the size schedule, bf16 autocast, the trainer with gradient
accumulation, and DDP (2 CPU processes)."""

import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from mrl_text.losses import CoSENTLoss, InfoNCELoss, MatryoshkaDepthLoss, MatryoshkaLoss, cached_loss
from mrl_text.losses.cached import GRADCACHE_CITATION, ReplayableState, split_features
from mrl_text.training.trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments

from .conftest import launch_two_cpu_processes

TEXTS = {
    "anchor": ["a man plays guitar", "the dog runs in the park today", "what is my balance", "hello world",
               "the sun is big", "a cat is sleeping", "bread in the park", "fast red car", "a sad song",
               "help with my card please"],
    "positive": ["a man is playing music", "a dog is running", "account balance please", "hello",
                 "big sun today", "the cat sleeps", "eating bread at the park", "a red car is fast",
                 "music that is sad", "card help"],
    "negative": ["a woman eats bread", "the cat sleeps", "help with my card", "sad rain", "small blue house",
                 "a dog is running", "a song on the piano", "slow green bike", "happy music", "the weather"],
}
SCORES = torch.tensor([5.0, 4, 3, 1, 2, 4, 3, 1, 2, 5], dtype=torch.float64)

WEIGHTINGS = {  # name -> MatryoshkaLoss options (and the base loss); every way the sizes can be weighted
    "equal": {},
    "weights": {"matryoshka_weights": [1.0, 0.5, 0.25, 2.0]},
    "n_dims_per_step": {"n_dims_per_step": 2},
    "full_size_targets": {"prefix_targets": "full_size"},
    "symmetric_hard_negatives": {"base": InfoNCELoss(symmetric=True, scale=10.0)},
    "cosent": {"base": CoSENTLoss()},
}


def float64_model(make_model, dropout):
    model = make_model().double()
    return model.train() if dropout else model.eval()


def columns_of(tokenizer, names):
    return [dict(tokenizer(TEXTS[name], padding=True, return_tensors="pt")) for name in names]


def matryoshka_loss(model, weighting, **options):
    options = {**WEIGHTINGS[weighting], **options}
    base = options.pop("base", InfoNCELoss())
    return MatryoshkaLoss(base, model.config.matryoshka_dimensions, **options)


def gradients(model):
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def reference_step(model, loss, columns, labels, mini_batch_size=None, seed=0):
    """The plain step: every column embedded with its graph (in the cached step's mini-batches when given, so that
    dropout draws the same masks), the loss on the whole batch, backward."""
    torch.manual_seed(seed)
    random.seed(seed)  # n_dims_per_step's draw
    embeddings = []
    for features in columns:
        parts = split_features(features, mini_batch_size) if mini_batch_size else [features]
        embeddings.append(torch.cat([model(**part).full_embeddings for part in parts]))
    value = loss(embeddings, labels)
    (value / 3).backward()  # as under gradient accumulation: the trainer scales the returned loss
    return value.detach(), gradients(model)


def cached_step(model, loss, columns, labels, mini_batch_size, seed=0):
    torch.manual_seed(seed)
    random.seed(seed)
    value = cached_loss(loss, lambda features: [model(**features).full_embeddings], columns, labels, mini_batch_size)
    (value / 3).backward()
    return value.detach(), gradients(model)


def assert_same_gradients(expected, actual, atol=1e-6, rtol=1e-6):
    assert expected.keys() == actual.keys() and len(expected) > 10
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, atol=atol, rtol=rtol, msg=lambda text, n=name: f"{n}: {text}")


def assert_different_gradients(expected, actual):
    assert any(not torch.allclose(actual[name], grad, atol=1e-6, rtol=1e-6) for name, grad in expected.items())


@pytest.mark.parametrize(
    ("weighting", "mini_batch_size"), [(w, 3) for w in WEIGHTINGS] + [("equal", 1), ("equal", 4), ("equal", 10)]
)
def test_cached_step_gives_the_full_batch_gradients(make_model, tiny_tokenizer, weighting, mini_batch_size):
    model = float64_model(make_model, dropout=False)
    loss = matryoshka_loss(model, weighting)
    cosent = weighting == "cosent"
    columns = columns_of(tiny_tokenizer, ["anchor", "positive"] if cosent else ["anchor", "positive", "negative"])
    labels = SCORES if cosent else None
    full_value, full = reference_step(model, loss, columns, labels)
    value, cached = cached_step(model, loss, columns, labels, mini_batch_size)
    torch.testing.assert_close(value, full_value, atol=1e-10, rtol=1e-10)
    assert_same_gradients(full, cached)


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0])
def test_cached_step_follows_the_size_schedule(make_model, tiny_tokenizer, scale):
    model = float64_model(make_model, dropout=False)
    loss = matryoshka_loss(model, "weights")
    loss.smaller_sizes_scale = scale  # what SizeSchedule sets each step
    columns = columns_of(tiny_tokenizer, ["anchor", "positive"])
    _, full = reference_step(model, loss, columns, None)
    _, cached = cached_step(model, loss, columns, None, 4)
    assert_same_gradients(full, cached)
    if scale != 1.0:  # the schedule changed the gradient: the check above is sensitive to it
        loss.smaller_sizes_scale = 1.0
        assert_different_gradients(full, reference_step(model, loss, columns, None)[1])


@pytest.mark.parametrize("weighting", ["equal", "full_size_targets"])
def test_dropout_is_replayed_in_the_second_pass(make_model, tiny_tokenizer, weighting):
    model = float64_model(make_model, dropout=True)
    loss = matryoshka_loss(model, weighting)
    columns = columns_of(tiny_tokenizer, ["anchor", "positive", "negative"])
    _, reference = reference_step(model, loss, columns, None, mini_batch_size=4)
    _, cached = cached_step(model, loss, columns, None, 4)
    assert_same_gradients(reference, cached)
    # Dropout is on: another seed draws other masks and another gradient.
    assert_different_gradients(reference, reference_step(model, loss, columns, None, mini_batch_size=4, seed=1)[1])


def test_without_the_replay_the_gradients_would_be_wrong(make_model, tiny_tokenizer, monkeypatch):
    """The dropout check above is sensitive to the replay: a second pass that draws fresh masks fails it."""

    @contextmanager
    def fresh_masks(self):
        yield

    model = float64_model(make_model, dropout=True)
    loss = matryoshka_loss(model, "equal")
    columns = columns_of(tiny_tokenizer, ["anchor", "positive"])
    _, reference = reference_step(model, loss, columns, None, mini_batch_size=4)
    monkeypatch.setattr(ReplayableState, "replay", fresh_masks)
    assert_different_gradients(reference, cached_step(model, loss, columns, None, 4)[1])


def test_bf16_autocast_is_replayed_in_the_second_pass(make_model, tiny_tokenizer):
    """The second pass runs inside backward, outside the trainer's autocast block: it must re-enter bf16."""
    model = make_model()
    loss = matryoshka_loss(model, "equal")
    columns = columns_of(tiny_tokenizer, ["anchor", "positive"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = [torch.cat([model(**p).full_embeddings for p in split_features(f, 4)]) for f in columns]
        reference_value = loss(embeddings)
    reference_value.backward()
    reference = gradients(model)
    autocast_in_encode = []

    def encode(features):
        autocast_in_encode.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return [model(**features).full_embeddings]

    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = cached_loss(loss, encode, columns, None, 4)
    value.backward()  # outside autocast, as accelerator.backward runs
    assert autocast_in_encode == [torch.bfloat16] * 12  # 2 columns x 3 mini-batches x 2 passes
    # Equal at bf16's precision, 1% of each gradient's largest entry (the reference sums the mini-batches' bf16
    # weight gradients in bf16, the cached step in float32); the float32 step's gradient is further off than that.
    def largest_error(grads):
        return max(((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item() for n, g in reference.items())

    assert largest_error(gradients(model)) < 1e-2
    loss([model(**f).full_embeddings for f in columns]).backward()
    assert largest_error(gradients(model)) > 1e-2


def test_padding_only_columns_are_trimmed_per_mini_batch(tiny_tokenizer):
    features = dict(tiny_tokenizer(["a b c d e f g h", "a", "a b", "c"], padding=True, return_tensors="pt"))
    chunks = split_features(features, 2)
    assert [c["input_ids"].shape for c in chunks] == [(2, 10), (2, 4)]
    assert torch.equal(chunks[1]["input_ids"], features["input_ids"][2:, :4])


def test_bad_mini_batch_size_is_refused(make_model):
    model = make_model()
    with pytest.raises(ValueError, match="mini_batch_size=0"):
        MatryoshkaLoss.from_config(model.config, InfoNCELoss(), mini_batch_size=0)
    with pytest.raises(ValueError, match="mini_batch_size=2.5"):
        cached_loss(InfoNCELoss(), lambda f: [f["x"]], [{"x": torch.ones(2, 2)}], None, 2.5)


def test_card_reports_the_option_and_cites_gradcache(make_model):
    model = make_model()
    loss = MatryoshkaLoss.from_config(model.config, InfoNCELoss(), mini_batch_size=16)
    assert loss.get_config_dict()["mini_batch_size"] == 16
    assert GRADCACHE_CITATION in loss.citation
    assert GRADCACHE_CITATION not in MatryoshkaLoss.from_config(model.config, InfoNCELoss()).citation


class GradientRecorder:
    """A trainer callback keeping the gradients each optimizer step is about to apply."""

    def __init__(self):
        from transformers import TrainerCallback

        recorder = self

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                recorder.steps.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

        self.steps, self.callback = [], Callback()


def train_and_record(model, tmp_path, loss, **overrides):
    for module in model.modules():  # dropout off: the plain and the cached run must compute one function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    options = dict(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=10, learning_rate=1e-3,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
    )
    options.update(overrides)
    recorder = GradientRecorder()
    rows = {name: texts * 4 for name, texts in TEXTS.items()}
    trainer = MatryoshkaTrainer(model=model, args=MatryoshkaTrainingArguments(**options),
                                train_dataset=Dataset.from_dict(rows), loss=loss, callbacks=[recorder.callback])
    trainer.train()
    return recorder.steps


@pytest.mark.slow
@pytest.mark.parametrize("depth", [False, True])
def test_trainer_with_gradient_accumulation_gets_the_full_batch_gradients(make_model, tmp_path, depth):
    def build(mini_batch_size):
        model = make_model(matryoshka_layers=[2, 1] if depth else None).double()
        loss = matryoshka_loss(model, "weights", mini_batch_size=mini_batch_size)
        return model, MatryoshkaDepthLoss.from_config(model.config, loss) if depth else loss

    steps, calls = {}, []
    for mini_batch_size in (None, 3):
        model, loss = build(mini_batch_size)
        if mini_batch_size:
            model.encoder.register_forward_hook(lambda *_: calls.append(1))
        steps[mini_batch_size] = train_and_record(model, tmp_path, loss, gradient_accumulation_steps=2)
    assert len(steps[3]) == 2
    for full, cached in zip(steps[None], steps[3]):
        assert_same_gradients(full, cached)
    # 2 steps x 2 accumulated batches x 3 columns x 4 mini-batches of 10 rows x 2 passes
    assert len(calls) == 2 * 2 * 3 * 4 * 2


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not installed")
def test_two_processes_cached_match_one_process_on_the_global_batch(tmp_path):
    from .ddp_negatives import build_model, loss_and_gradients

    script = Path(__file__).with_name("ddp_cached.py")
    launch_two_cpu_processes(script, tmp_path / "ddp.pt", port=29531)
    ddp = torch.load(tmp_path / "ddp.pt")
    assert ddp["world_size"] == 2

    model, tokenizer = build_model(tmp_path / "tokenizer")
    model.double()
    # One process, the whole global batch, plain (no cache), the loss ddp_cached.py's processes use.
    loss, grads = loss_and_gradients(model, tokenizer)
    torch.testing.assert_close(ddp["loss"], loss, atol=1e-10, rtol=1e-10)
    assert_same_gradients(grads, ddp["grads"])
    assert ddp["trainer_steps"] == 3 and all(torch.isfinite(torch.tensor(ddp["trainer_losses"])))


def test_recipe_option_reaches_the_loss():
    from mrl_text import MatryoshkaConfig

    from .conftest import RECIPES, load_module, tiny_bert_config

    recipe = load_module(RECIPES / "train_bert.py")
    config = MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[32, 16, 8], matryoshka_layers=[2, 1])
    assert recipe.build_loss(recipe.parse_arguments(["--mini_batch_size", "32"])[0], config).mini_batch_size == 32
    depth = recipe.build_loss(recipe.parse_arguments(["--mini_batch_size", "8", "--matryoshka_depth", "true"])[0],
                              config)
    assert isinstance(depth, MatryoshkaDepthLoss) and depth.mini_batch_size == 8
    assert recipe.build_loss(recipe.parse_arguments([])[0], config).mini_batch_size is None


def test_trainer_refuses_a_cached_loss_for_image_text_batches(tiny_tokenizer, tmp_path):
    from mrl_text import MatryoshkaDualEncoder, MatryoshkaDualEncoderConfig
    from mrl_text.losses import ImageTextInfoNCELoss

    from .test_dual_encoder import tiny_clip_config

    config = MatryoshkaDualEncoderConfig(encoder=tiny_clip_config(), matryoshka_dimensions=[24, 12])
    model = MatryoshkaDualEncoder(config)
    model.tokenizer = tiny_tokenizer
    loss = MatryoshkaLoss.from_config(model.config, ImageTextInfoNCELoss(model), mini_batch_size=2)
    args = MatryoshkaTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="mini_batch_size=2, which caches text-column batches"):
        MatryoshkaTrainer(model=model, args=args, loss=loss)
