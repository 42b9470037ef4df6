"""MatryoshkaDualEncoder: tiny random ALIGN / CLIP models built in code, the nested loss and the image-text
evaluators."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AlignConfig, AutoModel, CLIPConfig

import mrl_text
from mrl_text import MatryoshkaDualEncoder, MatryoshkaDualEncoderConfig, truncate_embeddings
from mrl_text.evaluation import (
    ImageKNNEvaluator,
    ImageTextRetrievalEvaluator,
    Results,
    ZeroShotClassificationEvaluator,
    as_dual_embedder,
    evaluate,
)
from mrl_text.losses import MatryoshkaLoss
from mrl_text.losses.image_text import ImageTextInfoNCELoss

from .conftest import WORDS, run_without_mrl_text
from .test_hub import _lay_out_hub_cache

TEXT_TOWER = dict(
    vocab_size=160, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=32,
)


def tiny_align_config(projection_dim=32, vision_width=32):
    """ALIGN: the text tower projects to `projection_dim`; the image embedding is the EfficientNet's last width."""
    vision = dict(
        num_channels=3, image_size=16, width_coefficient=1.0, depth_coefficient=1.0, in_channels=[32, 16],
        out_channels=[16, vision_width], kernel_sizes=[3, 3], strides=[1, 2], num_block_repeats=[1, 1],
        expand_ratios=[1, 2], hidden_dim=32, depthwise_padding=[],
    )
    return AlignConfig(text_config=TEXT_TOWER, vision_config=vision, projection_dim=projection_dim)


def tiny_clip_config(projection_dim=24):
    vision = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=8
    )
    text = {**TEXT_TOWER, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


CONFIGS = {"align": (tiny_align_config, [32, 16, 8, 4]), "clip": (tiny_clip_config, [24, 12, 6])}


@pytest.fixture(params=sorted(CONFIGS))
def dual(request, tiny_tokenizer):
    build, dims = CONFIGS[request.param]
    torch.manual_seed(0)
    config = MatryoshkaDualEncoderConfig(encoder=build(), matryoshka_dimensions=dims)
    model = MatryoshkaDualEncoder(config).eval()
    model.tokenizer = tiny_tokenizer
    return model


@pytest.fixture
def batch(tiny_tokenizer):
    torch.manual_seed(1)
    texts = ["a dog is running in the park", "the cat sleeps", "a man plays guitar", "red car on the street"]
    return tiny_tokenizer(texts, padding=True, return_tensors="pt"), torch.randn(4, 3, 16, 16), texts


@pytest.mark.slow
def test_shapes_at_every_size(dual, batch):
    text, pixels, _ = batch
    full = dual.config.embedding_size
    for dim in dual.config.matryoshka_dimensions:
        assert dual.get_text_features(**text, dim=dim).shape == (4, dim)
        assert dual.get_image_features(pixel_values=pixels, dim=dim).shape == (4, dim)
    out = dual(**text, pixel_values=pixels[:3], dim=dual.config.matryoshka_dimensions[-1])
    assert out.logits_per_text.shape == (4, 3) and out.logits_per_image.shape == (3, 4)
    assert out.full_text_embeds.shape == (4, full) and out.full_image_embeds.shape == (3, full)
    assert out.logit_scale.requires_grad and out.logit_scale.ndim == 0


@pytest.mark.slow
def test_each_prefix_is_normalized_on_its_own(dual, batch):
    text, pixels, _ = batch
    out = dual(**text, pixel_values=pixels)
    # the wrapper returns the wrapped model's own features at full size, un-normalized
    reference = dual.encoder.get_text_features(**{k: v for k, v in text.items() if k in dual._text_kwargs})
    torch.testing.assert_close(out.full_text_embeds, reference.pooler_output)
    for dim in dual.config.matryoshka_dimensions:
        image = dual.get_image_features(pixel_values=pixels, dim=dim)
        torch.testing.assert_close(image.norm(dim=-1), torch.ones(4))
        expected = out.full_image_embeds[:, :dim] / out.full_image_embeds[:, :dim].norm(dim=-1, keepdim=True)
        torch.testing.assert_close(image, expected)
        if dim < dual.config.embedding_size:  # not the prefix of the normalized full vector (shorter than unit)
            assert not torch.allclose(image, truncate_embeddings(out.full_image_embeds, None)[:, :dim])
    small = dual(**text, pixel_values=pixels, dim=dual.config.matryoshka_dimensions[-1])
    torch.testing.assert_close(
        small.logits_per_text, small.logit_scale * small.text_embeds @ small.image_embeds.T
    )


def test_logit_scale_is_the_wrapped_models_temperature(dual):
    if hasattr(dual.encoder, "temperature"):
        torch.testing.assert_close(dual.logit_scale, 1 / dual.encoder.temperature.detach())
    else:
        torch.testing.assert_close(dual.logit_scale, dual.encoder.logit_scale.detach().exp())


@pytest.mark.slow
def test_loss_is_the_weighted_sum_of_per_size_losses(dual, batch):
    text, pixels, _ = batch
    dual.config.matryoshka_weights = [float(i + 1) for i in range(len(dual.config.matryoshka_dimensions))]
    out = dual(**text, pixel_values=pixels)
    loss = MatryoshkaLoss.from_config(dual.config, ImageTextInfoNCELoss(dual))(
        [out.full_image_embeds, out.full_text_embeds]
    )
    expected = 0.0
    for dim, weight in zip(dual.config.matryoshka_dimensions, dual.config.matryoshka_weights):
        sized = dual(**text, pixel_values=pixels, dim=dim)  # separately, through the model at that size
        targets = torch.arange(4)
        per_size = (
            torch.nn.functional.cross_entropy(sized.logits_per_image, targets)
            + torch.nn.functional.cross_entropy(sized.logits_per_text, targets)
        ) / 2
        expected = expected + weight * per_size
    torch.testing.assert_close(loss, expected)
    loss.backward()  # the temperature is learned with the towers
    learned = dual.encoder.temperature if hasattr(dual.encoder, "temperature") else dual.encoder.logit_scale
    assert learned.grad is not None and learned.grad.abs() > 0


@pytest.mark.slow
def test_every_parameter_gets_a_gradient(dual, batch):
    """DDP needs every parameter in the loss: ALIGN's unused text pooler is dropped."""
    text, pixels, _ = batch
    dual.train()
    out = dual(**text, pixel_values=pixels)
    MatryoshkaLoss.from_config(dual.config, ImageTextInfoNCELoss(dual))(
        [out.full_image_embeds, out.full_text_embeds]
    ).backward()
    assert [name for name, p in dual.named_parameters() if p.grad is None] == []


@pytest.mark.slow
def test_save_load_bit_exact(dual, batch, tmp_path):
    text, pixels, _ = batch
    dual.config.truncate_dim = dual.config.matryoshka_dimensions[1]
    dual.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "matryoshka_dual_encoder"
    assert config["auto_map"]["AutoModel"] == "modeling_matryoshka_dual_encoder.MatryoshkaDualEncoder"
    assert config["matryoshka_dimensions"] == dual.config.matryoshka_dimensions and config["is_matryoshka"]
    for name in ("modeling_matryoshka_dual_encoder.py", "configuration_matryoshka_dual_encoder.py",
                 "modeling_matryoshka.py", "configuration_matryoshka.py"):
        assert (tmp_path / name).is_file(), name
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MatryoshkaDualEncoder)
    for got, want in (
        (loaded.get_text_features(**text), dual.get_text_features(**text)),
        (loaded.get_image_features(pixel_values=pixels), dual.get_image_features(pixel_values=pixels)),
    ):
        assert got.shape == (4, dual.config.truncate_dim)  # truncate_dim from config.json
        assert torch.equal(got, want)
    assert torch.equal(loaded.logit_scale, dual.logit_scale)
    assert loaded.tokenizer is not None  # saved next to the weights


def test_mismatched_tower_sizes_are_rejected():
    with pytest.raises(ValueError, match=r"text 16, image 32.*un-projected vision output.*projection_dim"):
        MatryoshkaDualEncoderConfig(encoder=tiny_align_config(projection_dim=16, vision_width=32))
    with pytest.raises(ValueError, match="larger than the embedding size 24"):
        MatryoshkaDualEncoderConfig(encoder=tiny_clip_config(24), matryoshka_dimensions=[32, 16])
    with pytest.raises(ValueError, match="truncate_dim"):
        MatryoshkaDualEncoderConfig(encoder=tiny_clip_config(24), matryoshka_dimensions=[24, 12], truncate_dim=5)
    with pytest.warns(UserWarning, match="lacks the full embedding size 24"):
        config = MatryoshkaDualEncoderConfig(encoder=tiny_clip_config(24), matryoshka_dimensions=[6, 12])
    assert config.matryoshka_dimensions == [24, 12, 6]


def test_wrong_inputs_say_what_is_missing(dual, batch):
    text, _, _ = batch
    with pytest.raises(ValueError, match="pixel_values"):
        dual.get_image_features(dim=4)
    with pytest.raises(ValueError, match="input_ids"):
        dual.get_text_features(attention_mask=text["attention_mask"])
    with pytest.raises(ValueError, match="dim=99"):
        dual.get_text_features(**text, dim=99)


def _toy_images(labels, seed=0):
    """Images whose class shows in their pixels, so a random image tower already separates the classes a bit."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(len(labels), 3, 16, 16, generator=generator) * 0.1
    for i, label in enumerate(labels):
        pixels[i, label % 3, (label * 4) % 16 : (label * 4) % 16 + 4] += 3.0
    return pixels


@pytest.mark.slow
def test_image_text_evaluators_score_every_size_from_one_encoding(dual):
    labels = [0, 1, 2, 3] * 3
    pixels = _toy_images(labels)
    names = ["dog", "cat", "car", "bike"]
    embedder = as_dual_embedder(dual)
    calls = {"texts": 0, "images": 0}
    encode_texts, encode_images = embedder._encode_fn, embedder._encode_images_fn

    def count_texts(texts):
        calls["texts"] += 1
        return encode_texts(texts)

    def count_images(images):
        calls["images"] += 1
        return encode_images(images)

    embedder._encode_fn, embedder._encode_images_fn = count_texts, count_images
    captions = [f"a photo of a {n}" for n in names]
    evaluators = [
        ZeroShotClassificationEvaluator(pixels, labels, names, ["a photo of a {}", "the {}"], name="zs"),
        ImageTextRetrievalEvaluator(pixels, captions, [[y] for y in labels], name="ret"),
        ImageKNNEvaluator(pixels, labels, pixels, labels, k=1, name="knn"),
    ]
    results = evaluate(embedder, evaluators)
    assert calls == {"texts": 2, "images": 4}  # zero-shot prompts + captions; knn train + test, zs, retrieval
    assert isinstance(results, Results) and results.dims() == dual.config.matryoshka_dimensions
    for dim in dual.config.matryoshka_dimensions:
        assert results.value("knn", "knn_accuracy", dim) == 1.0  # 1-NN of an image in its own set is itself
        assert 0 <= results.value("zs", "accuracy", dim) <= 1
        for direction in ("image_to_text", "text_to_image"):
            r1, r5, r10 = (results.value("ret", f"{direction}_recall@{k}", dim) for k in (1, 5, 10))
            assert 0 <= r1 <= r5 <= r10 == 1.0  # 4 captions: every relevant caption is in the top 10


def test_zero_shot_and_recall_against_hand_computation():
    """A DualEmbedder with fixed vectors: predictions and recalls checked by hand, at two sizes."""
    from mrl_text.evaluation import DualEmbedder

    # image i of class c(i); text vectors: class prompts. At size 2 only the first two coordinates count.
    images = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.1, 0.0, 1.0, 0.0]])
    text_vectors = {"x zero": [1.0, 0.0, 0.0, 0.0], "x one": [0.0, 1.0, 0.0, 0.0], "x two": [0.0, 0.0, 1.0, 0.0]}
    embedder = DualEmbedder(
        lambda texts: torch.tensor([text_vectors[t] for t in texts]), lambda pixels: images[: len(pixels)], 4, [4, 2],
        "hand",
    )
    pixels = torch.zeros(3, 1, 2, 2)
    zero_shot = ZeroShotClassificationEvaluator(pixels, [0, 1, 2], ["zero", "one", "two"], ["x {}"], name="zs")
    rows = {(r["metric"], r["dim"]): r["value"] for r in zero_shot.evaluate(embedder)}
    assert rows[("accuracy", 4)] == 1.0
    # at size 2 image 2 is (0.1, 0) -> nearest prompt "zero": wrong; the "two" prompt is (0, 0) there
    assert rows[("accuracy", 2)] == pytest.approx(2 / 3)
    retrieval = ImageTextRetrievalEvaluator(pixels, ["x zero", "x one", "x two"], name="ret")
    rows = {(r["metric"], r["dim"]): r["value"] for r in retrieval.evaluate(embedder)}
    assert rows[("image_to_text_recall@1", 4)] == 1.0 and rows[("text_to_image_recall@1", 4)] == 1.0
    assert rows[("image_to_text_recall@1", 2)] == pytest.approx(2 / 3)


def test_evaluator_inputs_are_checked():
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        ImageTextRetrievalEvaluator(torch.zeros(3, 1, 2, 2), ["a", "b"])
    with pytest.raises(ValueError, match="labels \\[7\\] have no class name"):
        ZeroShotClassificationEvaluator(torch.zeros(1, 1, 2, 2), [7], ["a", "b"])
    with pytest.raises(ValueError, match="pixel_values must be"):
        ImageKNNEvaluator(torch.zeros(2, 4), [0, 1], torch.zeros(2, 4), [0, 1])
    with pytest.raises(TypeError, match="MatryoshkaDualEncoder"):
        ZeroShotClassificationEvaluator(torch.zeros(1, 1, 2, 2), [0], ["a"]).evaluate(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_trust_remote_code_without_mrl_text(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    model = MatryoshkaDualEncoder(
        MatryoshkaDualEncoderConfig(encoder=tiny_clip_config(), matryoshka_dimensions=[24, 12, 6], truncate_dim=6)
    ).eval()
    model.tokenizer = tiny_tokenizer
    model.save_pretrained(tmp_path / "model")
    texts = [" ".join(WORDS[i : i + 4]) for i in range(0, 12, 4)]
    pixels = torch.randn(2, 3, 16, 16)
    torch.save(
        {"pixels": pixels, "text": model.encode_texts(texts), "image": model.encode_images(pixels)},
        tmp_path / "expected.pt",
    )
    script = f"""
        import torch
        from transformers import AutoModel
        m = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert "mrl_text" not in sys.modules
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        text, image = m.encode_texts({texts!r}), m.encode_images(expected["pixels"])
        assert text.shape == (3, 6) and image.shape == (2, 6), (text.shape, image.shape)
        assert torch.equal(text, expected["text"]) and torch.equal(image, expected["image"])
        print("REMOTE-OK")
        """
    run_without_mrl_text(script, tmp_path)


@pytest.mark.slow
def test_push_to_hub_carries_weights_config_code_and_card(captured_commit, tiny_tokenizer, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import ModelCard

    from mrl_text.cards.card import PLOT_FILENAME

    torch.manual_seed(0)
    model = MatryoshkaDualEncoder(
        MatryoshkaDualEncoderConfig(encoder=tiny_clip_config(), matryoshka_dimensions=[24, 12, 6], truncate_dim=12)
    ).eval()
    model.tokenizer = tiny_tokenizer
    model.eval_results = Results(
        [{"model": "org/dual", "task": "zero-shot", "metric": "accuracy", "dim": d, "value": 0.5 + d / 100}
         for d in (24, 12, 6)]
        + [{"model": "org/dual", "task": "retrieval", "metric": "text_to_image_recall@1", "dim": d, "value": 0.4}
           for d in (24, 12, 6)],
        {"zero-shot": "accuracy", "retrieval": "text_to_image_recall@1"},
    )
    model.push_to_hub("org/dual")

    (commit,) = captured_commit["commits"]
    files = commit["files"]
    code = {name for name in files if name.endswith(".py")}
    assert set(files) - code == {
        "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md", PLOT_FILENAME,
        "model_card_data.json",
    }
    # the two dual-encoder files and the text files they import (whatever those import in turn), as in the package
    assert {
        "modeling_matryoshka_dual_encoder.py", "configuration_matryoshka_dual_encoder.py", "modeling_matryoshka.py",
        "configuration_matryoshka.py",
    } <= code
    package = Path(mrl_text.__file__).parent / "models"
    for name in code:
        source = package / name
        assert files[name] == source.read_bytes(), name
    config = json.loads(files["config.json"])
    assert config["auto_map"] == {
        "AutoConfig": "configuration_matryoshka_dual_encoder.MatryoshkaDualEncoderConfig",
        "AutoModel": "modeling_matryoshka_dual_encoder.MatryoshkaDualEncoder",
    }
    assert config["encoder"]["model_type"] == "clip" and config["truncate_dim"] == 12
    card = ModelCard(files["README.md"].decode())
    assert card.data.pipeline_tag == "zero-shot-image-classification" and "image-text" in card.data.tags
    assert len(card.data.eval_results) == 6
    assert 'AutoModel.from_pretrained("org/dual")' in card.text and "get_image_features" in card.text

    # pull: the uploaded files, served from a Hub cache, load to the same model
    for name, content in files.items():
        (tmp_path / "pushed" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "pushed" / name).write_bytes(content)
    _lay_out_hub_cache(tmp_path / "pushed", tmp_path / "hub", repo_id="org/dual")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = AutoModel.from_pretrained("org/dual").eval()
    pixels = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded.encode_images(pixels), model.encode_images(pixels))
    # equal weights (bit for bit, as the images show); CLIP's text attention mask differs by one rounding between a
    # model built in code (config dtype None) and a loaded one (float32): 4e-8
    texts = ["the dog runs"]
    torch.testing.assert_close(loaded.encode_texts(texts), model.encode_texts(texts), atol=1e-6, rtol=0)


def _gathered_loss_worker(rank, world_size, init_file, image, text, out_dir):
    """One of `world_size` processes: its share of the rows, the loss gathered across processes, gradients."""
    import torch.distributed as dist

    torch.set_num_threads(1)  # a forked child must not reuse the parent's thread pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        share = image.shape[0] // world_size
        rows = slice(rank * share, (rank + 1) * share)
        image_rows = image[rows].clone().requires_grad_(True)
        text_rows = text[rows].clone().requires_grad_(True)
        log_scale = torch.tensor(2.0, requires_grad=True)
        image_text = ImageTextInfoNCELoss(SimpleNamespace(logit_scale=log_scale.exp()))
        loss = MatryoshkaLoss(image_text, [16, 8, 4], [1.0, 0.5, 2.0])([image_rows, text_rows])
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "image": image_rows.grad, "text": text_rows.grad, "scale": log_scale.grad},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_negatives_are_gathered_across_processes(tmp_path):
    """2 processes (gloo), each with half the pairs, give the loss and gradients of 1 process on all pairs."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    image, text = torch.randn(8, 16), torch.randn(8, 16)
    # fork: the workers inherit the imported modules instead of importing transformers again (seconds, not tens)
    mp.start_processes(
        _gathered_loss_worker, args=(2, str(tmp_path / "init"), image, text, str(tmp_path)), nprocs=2,
        start_method="fork",
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    image, text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    log_scale = torch.tensor(2.0, requires_grad=True)
    image_text_loss = ImageTextInfoNCELoss(SimpleNamespace(logit_scale=log_scale.exp()))
    loss_of = MatryoshkaLoss(image_text_loss, [16, 8, 4], [1.0, 0.5, 2.0])
    loss = loss_of([image, text])
    loss.backward()
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach())
    # each process receives every process's loss gradient for its rows: the sum, i.e. world size x the mean's
    torch.testing.assert_close(torch.cat([r["image"] for r in ranks]) / 2, image.grad)
    torch.testing.assert_close(torch.cat([r["text"] for r in ranks]) / 2, text.grad)
    torch.testing.assert_close((ranks[0]["scale"] + ranks[1]["scale"]) / 2, log_scale.grad)  # as DDP averages
    # without gathering a process would see only its own negatives: a different loss
    local = loss_of([image[:4], text[:4]])
    assert not torch.allclose(local, ranks[0]["loss"])


@pytest.mark.slow
def test_recipe_trains_a_saved_model_on_an_image_caption_dataset(tmp_path, tiny_tokenizer):
    """The recipe's Hub path (model + processor + image-caption dataset), served from local folders."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    from datasets import Dataset, DatasetDict
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    CLIPModel(tiny_clip_config()).save_pretrained(tmp_path / "clip")
    tiny_tokenizer.save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
        tmp_path / "clip"
    )
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(12)]
    captions = [[f"a {w} photo", "other"] for w in WORDS[:12]]
    DatasetDict({"train": Dataset.from_dict({"img": images, "sentences": captions})}).save_to_disk(tmp_path / "data")

    spec = importlib.util.spec_from_file_location(
        "train_align", Path(__file__).resolve().parents[1] / "recipes" / "train_align.py"
    )
    recipe_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_module)
    recipe = {
        "model": str(tmp_path / "clip"), "matryoshka_dimensions": [24, 12, 6], "dataset": str(tmp_path / "data"),
        "image_column": "img", "caption_column": "sentences", "eval_size": 4, "batch_size": 4, "epochs": 1,
    }
    model, before, after, schedule = recipe_module.train(recipe)
    assert isinstance(model, MatryoshkaDualEncoder) and schedule["steps"] == 2  # 8 training pairs, batches of 4
    assert after.dims("retrieval") == [24, 12, 6]
    assert after.metrics("retrieval")[0] == "image_to_text_recall@1"
    assert not torch.equal(model.encoder.logit_scale.detach(), torch.tensor(2.6592))  # the temperature was trained


@pytest.mark.slow
def test_trainer_trains_a_dual_encoder_with_the_image_text_loss(tmp_path, tiny_tokenizer):
    """MatryoshkaTrainer without loss= or a collator: the image-text InfoNCE at every size of the config, each distinct
    caption of a batch encoded once, a step's loss equal to the nested loss over every row's own caption, and the
    loss falls as the towers and the temperature train."""
    from mrl_text import MatryoshkaTrainer, MatryoshkaTrainingArguments
    from mrl_text.training.collator import ImageTextDataCollator

    torch.manual_seed(0)
    config = MatryoshkaDualEncoderConfig(encoder=tiny_clip_config(), matryoshka_dimensions=[24, 12, 6])
    model = MatryoshkaDualEncoder(config)
    model.tokenizer = tiny_tokenizer
    words, images = ["dog", "cat", "car", "sun"], torch.randn(4, 3, 16, 16)  # one image per word, rows noisy copies
    rows = [{"pixel_values": images[i % 4] + 0.3 * torch.randn(3, 16, 16), "caption": f"a {words[i % 4]}"}
            for i in range(32)]
    args = MatryoshkaTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=24, learning_rate=3e-3, use_cpu=True,
        report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=rows)
    assert isinstance(trainer.loss, MatryoshkaLoss) and isinstance(trainer.loss.base_loss, ImageTextInfoNCELoss)
    assert trainer.loss.matryoshka_dimensions == [24, 12, 6] and trainer.loss.base_loss.model is model
    assert isinstance(trainer.data_collator, ImageTextDataCollator)
    batch = trainer.data_collator(rows[:8])
    assert batch["input_ids"].shape[0] == 4 and batch["caption_index"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]

    def step_loss():
        model.eval()
        with torch.no_grad():
            return trainer.compute_loss(model, batch)

    before = step_loss()
    every_caption = tiny_tokenizer([row["caption"] for row in rows[:8]], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**every_caption, pixel_values=batch["pixel_values"])
        expected = MatryoshkaLoss.from_config(config, ImageTextInfoNCELoss(model))(
            [out.full_image_embeds, out.full_text_embeds]
        )
    torch.testing.assert_close(before, expected)
    scale = model.logit_scale.item()
    trainer.train()
    assert trainer.state.global_step == 24 and step_loss() < 0.7 * before
    assert model.logit_scale.item() != scale  # the temperature trains with the towers


def test_image_text_collator_says_what_a_row_lacks(tiny_tokenizer):
    from mrl_text.training.collator import ImageTextDataCollator

    collator = ImageTextDataCollator(tiny_tokenizer)
    with pytest.raises(ValueError, match=r"not \['caption'\].*caption_column"):
        collator([{"pixel_values": torch.zeros(3, 4, 4), "text": "a dog"}])
    with pytest.raises(ValueError, match="image_processor"):
        collator([("not an image", "a dog")])
    with pytest.raises(ValueError, match="not text"):
        collator([(torch.zeros(3, 4, 4), 3)])
    stacked = ImageTextDataCollator(tiny_tokenizer, image_processor=lambda images: torch.ones(len(images), 1, 2, 2))
    assert stacked([("any", "a dog"), ("image", "a dog")])["pixel_values"].shape == (2, 1, 2, 2)


def test_saved_config_names_nested_towers_without_local_paths(tmp_path):
    """A dual encoder built from local towers (the image-text demo) must not write this machine's paths into the
    towers' configs nested in config.json: it is shared on the Hub."""
    tower = tmp_path / "site-packages" / "some_pkg" / "text-model"
    tower.mkdir(parents=True)
    encoder = tiny_clip_config()
    encoder.text_config._name_or_path = str(tower)
    config = MatryoshkaDualEncoderConfig(encoder=encoder, matryoshka_dimensions=[24, 12])
    saved = json.dumps(config.to_dict())
    assert str(tmp_path) not in saved
    assert config.to_dict()["encoder"]["text_config"]["_name_or_path"] == "text-model"
