"""Hub round trip without a network: the upload is intercepted at HfApi.upload_folder, the download is served from a
Hub cache folder laid out exactly as huggingface_hub writes it (models--org--name/snapshots/<rev>, refs/main)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel

import mrl_text
from mrl_text import MatryoshkaModel
from mrl_text.cards.card import PLOT_FILENAME
from mrl_text.evaluation import Results

from .conftest import REVISION, run_without_mrl_text


def _results():
    rows = [
        {"model": "org/name", "task": "stsb", "metric": "spearman", "dim": d, "value": 0.5 + d / 1000}
        for d in (32, 16, 8, 4)
    ]
    return Results(rows, {"stsb": "spearman"})


@pytest.mark.slow
def test_push_to_hub_sends_everything_in_one_commit(make_model, captured_commit, tmp_path):
    model = make_model(truncate_dim=16)
    model.eval_results = _results()
    model.card_data = {"loss": "MatryoshkaLoss(InfoNCELoss)"}
    model.push_to_hub("org/name")

    assert captured_commit["create_repo"] == "org/name"
    assert len(captured_commit["commits"]) == 1
    files = captured_commit["commits"][0]["files"]
    assert {
        "model.safetensors",
        "config.json",
        "modeling_matryoshka.py",
        "modeling_matryoshka_utils.py",
        "configuration_matryoshka.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        PLOT_FILENAME,
    } <= set(files)
    # exactly what save_pretrained writes, byte for byte (the card differs only in the id its snippets name)
    model.save_pretrained(tmp_path / "saved")
    saved = {
        str(p.relative_to(tmp_path / "saved")): p.read_bytes() for p in (tmp_path / "saved").rglob("*") if p.is_file()
    }
    assert set(files) == set(saved)
    assert all(files[name] == saved[name] for name in saved if name != "README.md")
    config = json.loads(files["config.json"])
    assert config["auto_map"]["AutoModel"] == "modeling_matryoshka.MatryoshkaModel"
    assert config["matryoshka_dimensions"] == [32, 16, 8, 4] and config["truncate_dim"] == 16
    package = Path(__file__).resolve().parents[1] / "mrl_text" / "models"
    assert files["modeling_matryoshka.py"] == (package / "modeling_matryoshka.py").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert "matryoshka" in card.data.tags and len(card.data.eval_results) == 4
    assert 'AutoModel.from_pretrained("org/name")' in card.text  # the snippets name the repository
    assert files[PLOT_FILENAME][:4] == b"\x89PNG"

    # the uploaded files are a loadable model with the same weights
    pulled = tmp_path / "pulled"
    for name, content in files.items():
        (pulled / name).parent.mkdir(parents=True, exist_ok=True)
        (pulled / name).write_bytes(content)
    loaded = MatryoshkaModel.from_pretrained(pulled)
    for (key, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), key


def test_push_without_results_uses_a_generic_card(make_model, captured_commit, monkeypatch):
    from transformers.utils import hub as transformers_hub

    # the generic card would first look for a card on the Hub: answer "none there" without a network
    def no_remote_card(repo_id, **kwargs):
        raise huggingface_hub.errors.EntryNotFoundError("no README.md")

    monkeypatch.setattr(transformers_hub.ModelCard, "load", no_remote_card)
    make_model().push_to_hub("org/plain")
    files = captured_commit["commits"][0]["files"]
    assert "README.md" in files and PLOT_FILENAME not in files
    assert "model-index" not in files["README.md"].decode()


def _lay_out_hub_cache(model_dir, hub_cache, repo_id="org/name"):
    repo = Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return repo


@pytest.mark.slow
def test_from_pretrained_hub_id_from_the_cache(make_model, tmp_path, monkeypatch, sentences):
    model = make_model(truncate_dim=8)
    model.eval_results = _results()
    model.save_pretrained(tmp_path / "saved")
    _lay_out_hub_cache(tmp_path / "saved", tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    loaded = AutoModel.from_pretrained("org/name")
    assert type(loaded) is MatryoshkaModel and loaded.name_or_path == "org/name"
    torch.testing.assert_close(loaded.encode(sentences), model.encode(sentences))  # tokenizer from the cache too
    assert loaded.encode(sentences).shape == (len(sentences), 8)


@pytest.mark.slow
def test_trust_remote_code_from_the_hub_cache_without_mrl_text(make_model, tmp_path, sentences):
    model = make_model(truncate_dim=8)
    model.save_pretrained(tmp_path / "saved")
    _lay_out_hub_cache(tmp_path / "saved", tmp_path / "home" / "hub")
    torch.save(model.encode(sentences), tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["mrl_text"] = None  # any import of mrl_text now fails: the Hub copy must not need it
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained("org/name", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        embeddings = model.encode({sentences!r})
        torch.testing.assert_close(embeddings, torch.load({str(tmp_path / "expected.pt")!r}))
        print("ok", tuple(embeddings.shape))
        """
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_CACHE": str(tmp_path / "home" / "hub"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok (5, 8)" in result.stdout


@pytest.mark.slow
def test_pushed_and_pulled_folder_loads_without_mrl_text(make_model, captured_commit, tmp_path, sentences):
    """What push_to_hub uploads, downloaded into a Hub cache, loads with trust_remote_code where mrl-text is not
    installed, with no question asked (no terminal): as a transformers model and as a sentence-transformers one."""
    model = make_model(truncate_dim=8)
    model.push_to_hub("org/pushed")
    (commit,) = captured_commit["commits"]
    pushed = tmp_path / "pushed"
    for name, content in commit["files"].items():
        (pushed / name).parent.mkdir(parents=True, exist_ok=True)
        (pushed / name).write_bytes(content)
    _lay_out_hub_cache(pushed, tmp_path / "home" / "hub", repo_id="org/pushed")
    torch.save({dim: model.encode(sentences, dim=dim) for dim in (None, 4)}, tmp_path / "expected.pt")
    script = f"""
        import torch
        from huggingface_hub import snapshot_download
        from sentence_transformers import SentenceTransformer
        from transformers import AutoModel
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModel.from_pretrained("org/pushed", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        for dim, want in expected.items():
            assert torch.equal(model.encode({sentences!r}, dim=dim), want), dim
        st = SentenceTransformer(snapshot_download("org/pushed"), device="cpu", trust_remote_code=True)
        got = st.encode({sentences!r}, dim=4, convert_to_tensor=True)
        assert torch.allclose(got, expected[4], atol=1e-5), got
        print("REMOTE-OK")
        """
    home = tmp_path / "home"
    run_without_mrl_text(
        script, tmp_path, env={"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}
    )


def test_push_to_hub_in_the_exported_format_sends_a_standard_folder(make_model, captured_commit, tmp_path):
    """`push_exported_to_hub(model, repo_id, "sentence-transformers")` uploads what `export_model` writes: the
    encoder's own model type
    with the nesting in config.json and no mrl-text code."""
    model = make_model(truncate_dim=16)
    mrl_text.push_exported_to_hub(model, "org/exported", format="sentence-transformers")
    (commit,) = captured_commit["commits"]
    pushed = commit["files"]
    config = json.loads(pushed["config.json"])
    assert config["model_type"] == model.config.encoder.model_type
    assert config["is_matryoshka"] is True
    assert config["matryoshka_dimensions"] == model.config.matryoshka_dimensions
    assert not any(name.endswith(".py") for name in pushed), sorted(pushed)
    assert "org/exported" in pushed["README.md"].decode()

    local = mrl_text.export_model(model, tmp_path / "exported")
    exported = json.loads((Path(local or tmp_path / "exported") / "config.json").read_text())
    assert exported["matryoshka_dimensions"] == config["matryoshka_dimensions"]
