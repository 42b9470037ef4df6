"""Export to a standard folder: loads with no remote code and no mrl-text, equals encode at every size."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mrl_text
from mrl_text.cli import main
from mrl_text.deploy.export import export_model

from .conftest import run_without_mrl_text

ATOL = 1e-5


def st_prefixes(folder, texts, dims, **kwargs):
    """{dim: re-normalized prefix of the full SentenceTransformer embedding}, loaded without remote code."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu", **kwargs)
    full = st.encode(texts, convert_to_tensor=True, truncate_dim=max(dims))
    return st, {d: F.normalize(full[:, :d], dim=-1) for d in dims}


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", [{}, {"projection_dim": 24, "truncate_dim": 12}, {"pooling": "cls", "truncate_dim": 8}]
)
def test_sentence_transformer_equals_encode_at_every_size(make_model, sentences, tmp_path, config):
    dims = (24, 12, 6) if "projection_dim" in config else (32, 16, 8, 4)
    model = make_model(matryoshka_dimensions=dims, **config)
    folder = export_model(model, tmp_path / "export")
    st, prefixes = st_prefixes(folder, sentences, dims)
    for d in dims:
        torch.testing.assert_close(prefixes[d], model.encode(sentences, dim=d), atol=ATOL, rtol=0)
    # truncate_dim travels in config_sentence_transformers.json: the default size is the model's default size
    default = st.encode(sentences, convert_to_tensor=True)
    assert default.shape[1] == (config.get("truncate_dim") or dims[0])
    torch.testing.assert_close(F.normalize(default, dim=-1), model.encode(sentences), atol=ATOL, rtol=0)


def test_folder_is_a_standard_encoder_with_the_nesting_in_config(make_model, tmp_path):
    model = make_model(projection_dim=24, matryoshka_dimensions=(24, 12, 6), prompts={"query": "query: "})
    folder = export_model(model, tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and "auto_map" not in config and "encoder" not in config
    assert config["is_matryoshka"] is True and config["matryoshka_dimensions"] == [24, 12, 6]
    assert not list(folder.glob("*.py"))  # no code to trust
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: "} and st_config["similarity_fn_name"] == "cosine"
    card = (folder / "README.md").read_text()
    assert "dimensions=" in card and "truncate_dim=" in card and "vllm serve" in card and "infinity_emb" in card


@pytest.mark.slow
def test_loads_without_mrl_text_and_round_trips(make_model, sentences, tmp_path):
    """The folder needs neither mrl-text nor trust_remote_code; mrl-text reads its sizes back from config.json."""
    model = make_model(projection_dim=24, matryoshka_dimensions=(24, 12, 6), truncate_dim=12)
    folder = export_model(model, tmp_path / "export")
    expected = {d: model.encode(sentences, dim=d).tolist() for d in (24, 12, 6)}
    (tmp_path / "expected.json").write_text(json.dumps({"texts": sentences, "embeddings": expected}))
    script = f"""
        import json, torch, torch.nn.functional as F
        from sentence_transformers import SentenceTransformer
        from transformers import AutoModel
        data = json.load(open({str(tmp_path / "expected.json")!r}))
        st = SentenceTransformer({str(folder)!r}, device="cpu")  # trust_remote_code is off by default
        full = st.encode(data["texts"], convert_to_tensor=True, truncate_dim=24)
        for d, expected in data["embeddings"].items():
            got = F.normalize(full[:, :int(d)], dim=-1)
            assert (got - torch.tensor(expected)).abs().max() < {ATOL}, d
        encoder = AutoModel.from_pretrained({str(folder)!r})
        assert type(encoder).__name__ == "BertModel", type(encoder)
        assert encoder.config.matryoshka_dimensions == [24, 12, 6]
        print("REMOTE-OK")
    """
    run_without_mrl_text(script, tmp_path)

    back = mrl_text.from_sentence_transformer(str(folder))
    assert back.config.matryoshka_dimensions == [24, 12, 6]
    assert back.config.projection_dim == 24 and back.config.truncate_dim == 12
    for d in (24, 12, 6):
        torch.testing.assert_close(back.encode(sentences, dim=d), model.encode(sentences, dim=d), atol=ATOL, rtol=0)


def test_refuses_what_built_in_modules_cannot_express(make_model, tmp_path):
    model = make_model()
    model.adaptor = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU())
    with pytest.raises(ValueError, match="adaptor"):
        export_model(model, tmp_path / "a")
    with pytest.raises(ValueError, match="Unknown export format 'gguf'"):
        export_model(make_model(), tmp_path / "b", format="gguf")
    custom = make_model()
    custom.encoder.config.auto_map = {"AutoModel": "my_code.MyEncoder"}
    with pytest.raises(ValueError, match="remote code"):
        export_model(custom, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".*export-*"))


def test_refuses_dual_encoders_naming_the_format_they_support(tmp_path):
    from transformers import CLIPConfig

    from mrl_text import MatryoshkaDualEncoder, MatryoshkaDualEncoderConfig

    clip = CLIPConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        projection_dim=24,
    )
    model = MatryoshkaDualEncoder(MatryoshkaDualEncoderConfig(encoder=clip, matryoshka_dimensions=[24, 12]))
    with pytest.raises(ValueError, match=r"dual encoder.*save_pretrained"):
        export_model(model, tmp_path / "out")


def test_never_overwrites_unless_asked_and_keeps_files_on_failure(make_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_model(make_model(), out)
    assert (out / "notes.txt").read_text() == "mine"
    broken = make_model()
    broken.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        export_model(broken, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    export_model(make_model(), out, overwrite=True)
    assert (out / "modules.json").is_file() and not (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or previous folders left


def test_cli_export(make_model, tmp_path, capsys):
    saved = tmp_path / "saved"
    make_model().save_pretrained(saved)
    assert main(["export", str(saved), str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "bert"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(saved), str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["export", str(saved), str(tmp_path / "out"), "--overwrite"]) == 0


def test_onnx_graph_equals_torch_at_every_size(make_model, sentences, tmp_path):
    """onnx/model.onnx (what sentence-transformers' backend="onnx" and optimum load) gives the same embeddings."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'mrl-text[export]'")
    pytest.importorskip("onnx", reason="the ONNX exporter needs onnx: pip install 'mrl-text[export]'")
    dims = (24, 12, 6)
    model = make_model(matryoshka_dimensions=dims, projection_dim=24)
    folder = export_model(model, tmp_path / "export", format="onnx")
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    batch = model.tokenizer(sentences, padding=True, return_tensors="np")
    states = torch.from_numpy(session.run(None, {n: batch[n] for n in names})[0])
    mask = torch.from_numpy(batch["attention_mask"]).unsqueeze(-1).float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    with torch.no_grad():
        full = model.projection(pooled)
    for d in dims:
        torch.testing.assert_close(F.normalize(full[:, :d], dim=-1), model.encode(sentences, dim=d), atol=1e-4, rtol=0)


CALIBRATION = [f"sentence number {i} about {topic}" for i, topic in
               enumerate(["music", "dogs", "banks", "weather", "food", "cars", "parks", "the sun"] * 3)]


def assert_same_codes(prefix, codes, expected, ranges):
    """int8 codes equal, except where float rounding between two pipelines puts a value on a step edge."""
    from mrl_text.models.quantization import step_sizes

    steps = (torch.as_tensor(prefix) - ranges[0]) / step_sizes(ranges)
    on_edge = (steps - steps.round()).abs() < 1e-3
    differ = torch.as_tensor(codes) != torch.as_tensor(expected)
    assert not (differ & ~on_edge).any(), int(differ.sum())
    assert differ.float().mean() < 0.02  # an occasional edge, not a different rule


@pytest.mark.slow
def test_quantization_ranges_travel_with_export(make_model, sentences, tmp_path):
    from sentence_transformers.util.quantization import quantize_embeddings

    from mrl_text.deploy.export import exported_ranges
    from mrl_text.models.quantization import quantize

    model = make_model(projection_dim=24, matryoshka_dimensions=(24, 12, 8))
    with pytest.raises(ValueError, match="calibrate_quantization"):
        exported_ranges(export_model(model, tmp_path / "plain"), 12)
    measured = model.calibrate_quantization(CALIBRATION)
    folder = export_model(model, tmp_path / "export")
    assert json.loads((folder / "config.json").read_text())["quantization_ranges"] == model.config.quantization_ranges
    assert "quantize_embeddings" in (folder / "README.md").read_text()
    _, prefixes = st_prefixes(folder, sentences, (24, 12, 8))
    for d in (24, 12, 8):
        ranges = exported_ranges(folder, d)
        assert torch.equal(ranges, measured[d])
        expected = model.encode(sentences, dim=d, precision="int8")
        assert_same_codes(prefixes[d], quantize(prefixes[d], "int8", ranges), expected, ranges)
        theirs = quantize_embeddings(prefixes[d].numpy(), "int8", ranges=ranges.numpy())  # no mrl-text needed
        assert_same_codes(prefixes[d], theirs, expected, ranges)
    back = mrl_text.from_sentence_transformer(str(folder))  # and back: the ranges come home
    assert back.config.quantization_ranges == model.config.quantization_ranges
    assert "quantization_ranges" not in back.config.encoder.to_dict()
    assert torch.equal(
        back.encode(sentences, dim=12, precision="uint8"), model.encode(sentences, dim=12, precision="uint8")
    )


def test_onnx_export_gives_the_models_int8_codes(make_model, sentences, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'mrl-text[export]'")
    pytest.importorskip("onnx", reason="the ONNX exporter needs onnx: pip install 'mrl-text[export]'")
    from mrl_text.deploy.export import exported_ranges
    from mrl_text.models.quantization import quantize

    model = make_model(matryoshka_dimensions=(32, 16, 8))
    model.calibrate_quantization(CALIBRATION)
    folder = export_model(model, tmp_path / "export", format="onnx")
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"))
    batch = model.tokenizer(sentences, padding=True, return_tensors="np")
    states = torch.from_numpy(session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})[0])
    mask = torch.from_numpy(batch["attention_mask"]).unsqueeze(-1).float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    for d in (32, 16, 8):
        prefix = F.normalize(pooled[:, :d], dim=-1)
        ranges = exported_ranges(folder, d)
        codes = quantize(prefix, "int8", ranges)
        assert_same_codes(prefix, codes, model.encode(sentences, dim=d, precision="int8"), ranges)


def card_snippet(card, heading):
    """The first ```python block after `heading` in a card."""
    section = card.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_card_names_the_final_folder_and_its_unit_length_claim_holds(make_model, tmp_path, monkeypatch):
    """The card is rendered in the staging folder but names the folder asked for; what its sentence-transformers
    snippet says about the embeddings (shape, unit length) is what the snippet gives."""
    monkeypatch.chdir(tmp_path)
    model = make_model()
    export_model(model, "exp_st")
    card = (tmp_path / "exp_st" / "README.md").read_text()
    assert "# exp_st\n" in card and ".export-" not in card and ".exp_st" not in card
    assert 'SentenceTransformer("exp_st"' in card and "--model-id exp_st " in card and "vllm serve exp_st " in card
    snippet = card_snippet(card, "## sentence-transformers")
    assert "unit length" in snippet
    scope = {}
    exec(snippet, scope)  # runs from tmp_path: "exp_st" is the folder
    embeddings = torch.as_tensor(scope["embeddings"])
    assert tuple(embeddings.shape) == (2, 8)  # the middle size of (32, 16, 8, 4)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(embeddings, model.encode(["a sentence", "another one"], dim=8), atol=ATOL, rtol=0)
    plain = scope["model"].encode(["a sentence", "another one"])  # without normalize_embeddings: a cut unit vector
    assert (torch.as_tensor(plain).norm(dim=-1) < 0.999).all()

    export_model(make_model(normalize=False), "raw")  # a model that does not normalize claims no unit length
    raw_snippet = card_snippet((tmp_path / "raw" / "README.md").read_text(), "## sentence-transformers")
    assert "unit length" not in raw_snippet and "not normalized" in raw_snippet


def test_folder_has_standard_permissions_and_loads_without_a_load_report(make_model, tmp_path):
    import logging
    import os

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    old_umask = os.umask(0o022)
    try:
        folder = export_model(make_model(), tmp_path / "export")
    finally:
        os.umask(old_umask)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hf_logging.get_logger().addHandler(handler)  # transformers' root logger: where its load report goes
    try:
        encoder = AutoModel.from_pretrained(folder)
        SentenceTransformer(str(folder), device="cpu")
    finally:
        hf_logging.get_logger().removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    logged = "\n".join(record.getMessage() for record in records)
    assert "LOAD REPORT" not in logged and "MISSING" not in logged and "newly initialized" not in logged, logged
    assert torch.count_nonzero(encoder.pooler.dense.weight) == 0  # the pooler nobody trained is saved as zeros


def test_stale_staging_folders_are_removed_and_a_failed_export_keeps_the_old_folder(make_model, tmp_path,
                                                                                    monkeypatch):
    import os

    import mrl_text.deploy.export as export

    out = tmp_path / "out"
    export_model(make_model(), out)
    before = (out / "model.safetensors").read_bytes()
    # What kill -9 leaves: a staging folder of a process that no longer runs (and one of an older release, named by
    # tempfile.mkdtemp); a folder of a process that still runs is another export at work and stays.
    dead = tmp_path / ".out.export-999999999-deadbeef"
    legacy = tmp_path / ".out.export-ab_c1234"
    running = tmp_path / f".out.export-{os.getppid()}-cafecafe"
    for folder in (dead, legacy, running):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")

    def crash(model, directory, *args, **kwargs):
        (Path(directory) / "config.json").write_text("{}")
        raise RuntimeError("killed midway")

    monkeypatch.setattr(export, "write_folder", crash)
    with pytest.raises(RuntimeError, match="killed midway"):
        export_model(make_model(seed=1), out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before  # the old folder as it was
    assert not dead.exists() and not legacy.exists() and running.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", running.name])
    monkeypatch.undo()
    export_model(make_model(seed=1), out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != before


def test_cli_refuses_to_export_into_the_model_folder(make_model, tmp_path, capsys):
    saved = tmp_path / "saved"
    make_model().save_pretrained(saved)
    files = sorted(p.name for p in saved.iterdir())
    for out, relation in ((saved, " is the model folder"), (saved / "inside", " is inside the model folder"),
                          (tmp_path, " contains the model folder")):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(saved), str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and relation in err and "outside it" in err, err
    assert sorted(p.name for p in saved.iterdir()) == files
    assert json.loads((saved / "config.json").read_text())["model_type"] == "matryoshka"
    loaded = mrl_text.MatryoshkaModel.from_pretrained(saved)
    with pytest.raises(ValueError, match="is the model folder"):
        export_model(loaded, saved, overwrite=True)


def test_onnx_without_the_export_extra_says_what_to_install_before_any_work(make_model, tmp_path, capsys,
                                                                           monkeypatch):
    import importlib.util

    import transformers

    saved = tmp_path / "saved"
    make_model().save_pretrained(saved)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the format was checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_loading)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(saved), str(tmp_path / "out"), "--format", "onnx"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "needs onnx" in err and "pip install 'mrl-text[export]'" in err, err
    with pytest.raises(ImportError, match=r"mrl-text\[export\]"):
        export_model(make_model(), tmp_path / "out", format="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]
