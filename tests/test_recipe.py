"""recipes/train_bert.py: YAML configs parse, and a 2-step run on a tiny encoder trains, evaluates and saves."""

import importlib.util
import json
from pathlib import Path

import pytest
from transformers import AutoModel, BertModel

from .conftest import build_tokenizer, tiny_bert_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_bert", RECIPES / "train_bert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configs_parse(recipe):
    demo, args = recipe.parse_arguments([])
    assert demo.train_data == "chatterbot-corpus" and demo.matryoshka_dimensions == [384, 256, 128, 64, 32, 16]
    assert args.loss == "infonce" and args.output_dir.startswith("outputs/")
    bert, args = recipe.parse_arguments(["--config", str(RECIPES / "configs" / "bert_base_allnli.yaml"), "--bf16", "false"])
    assert bert.model_name_or_path == "bert-base-uncased" and bert.train_data == "sentence-transformers/all-nli"
    assert bert.matryoshka_dimensions == [768, 512, 256, 128, 64, 32, 16] and bert.eval_layout == "scored_pairs"
    assert args.per_device_train_batch_size == 128 and args.eval_strategy == "steps"
    # Flags override the YAML.
    _, args = recipe.parse_arguments(["--learning_rate", "1e-4"])
    assert args.learning_rate == 1e-4


def test_bad_config(recipe, tmp_path):
    (tmp_path / "bad.yaml").write_text("loss: infonce\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['learning_rat'\]"):
        recipe.parse_arguments(["--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        recipe.parse_arguments(["--config", str(tmp_path / "missing.yaml")])


def test_demo_recipe_smoke_on_a_tiny_encoder(recipe, tmp_path, capsys):
    encoder_dir = tmp_path / "tiny-bert"
    tokenizer = build_tokenizer(encoder_dir)
    BertModel(tiny_bert_config(vocab_size=len(tokenizer))).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    out = tmp_path / "out"
    before, after = recipe.main([
        "--model_name_or_path", str(encoder_dir), "--output_dir", str(out), "--max_steps", "2",
        "--max_train_samples", "60", "--per_device_train_batch_size", "8", "--save_strategy", "no",
        "--use_cpu", "true", "--disable_tqdm", "true",
    ])
    assert after.dims("retrieval") == [32, 16]  # the default nesting of a 32-d encoder
    assert set(after.metrics("retrieval")) >= {"ndcg@10", "mrr@10"}
    assert "| 16 |" in capsys.readouterr().out
    saved = json.loads((out / "eval_before_after.json").read_text())
    assert len(saved["after"]["rows"]) == len(after)
    model = AutoModel.from_pretrained(out)
    assert model.config.matryoshka_dimensions == [32, 16]
    assert model.encode(["hello"], dim=16).shape == (1, 16)
