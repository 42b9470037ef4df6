"""The Matryoshka adaptor inside a MatryoshkaModel: applied after pooling and projection, before truncation, in
forward / encode / truncate_dim, saved and loaded with the weights (with its per-size gate), used by the
sentence-transformers folder and by trust_remote_code without mrl-text; add_adaptor, `mrl-text adapt`, the card."""

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import mrl_text
from mrl_text import MatryoshkaConfig, MatryoshkaModel
from mrl_text.cli import main
from mrl_text.models.modeling_matryoshka_adaptor import MatryoshkaAdaptor, MatryoshkaAdaptorConfig

from .conftest import WORDS, run_without_mrl_text, tiny_bert_config

DIMS = [32, 16, 8, 4]
FAST = dict(epochs=2, supervised_epochs=2, hidden_size=16, batch_size=64, negatives=16, show_progress_bar=False)
ATOL = 1e-5


def random_texts(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


def gated_adaptor(size=32, adapted=(16, 4), seed=0):
    """An adaptor that really changes embeddings (random output layer), used at `adapted` sizes only."""
    torch.manual_seed(seed)
    adaptor = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(size, DIMS, hidden_size=16, adapted_dimensions=list(adapted)))
    torch.nn.init.normal_(adaptor.mlp[-1].weight, std=0.5)
    return adaptor.eval()


def per_size_adaptor(size=32, seed=0):
    """An adaptor choosing its map per size: a random-output MLP at 16, a random rotation at 4 (plain truncation
    at 32 and 8)."""
    torch.manual_seed(seed)
    candidates = {"mlp": {"rotation": None, "hidden_size": 16, "num_layers": 1},
                  "pca": {"rotation": "pca", "hidden_size": 16, "num_layers": 0}}
    adaptor = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(size, DIMS, num_layers=0, adapted_dimensions=[16, 4],
                                                        candidates=candidates, chosen={"16": "mlp", "4": "pca"}))
    torch.nn.init.normal_(adaptor.candidates["mlp"].mlp[-1].weight, std=0.5)
    adaptor.candidates["pca"].rotation.copy_(torch.linalg.qr(torch.randn(size, size))[0])
    return adaptor.eval()


ADAPTORS = pytest.mark.parametrize("build", [gated_adaptor, per_size_adaptor], ids=["one-map", "per-size"])


def expected(model, adaptor, texts, dim):
    """What the adapted model must return at `dim`: the adaptor's transform of the plain model's unit embeddings."""
    full = model.encode(texts, dim=model.config.embedding_size)
    return adaptor.transform(full, dim=dim)


@pytest.mark.slow
@pytest.mark.parametrize("config", [{}, {"projection_dim": 24, "matryoshka_dimensions": [24, 12, 6]}])
def test_adaptor_runs_before_truncation_everywhere(make_model, sentences, config):
    model = make_model(**config)
    size = model.config.embedding_size
    dims = model.config.matryoshka_dimensions
    adaptor = MatryoshkaAdaptor(MatryoshkaAdaptorConfig(size, dims, hidden_size=16, adapted_dimensions=dims[1::2]))
    torch.nn.init.normal_(adaptor.mlp[-1].weight, std=0.5)
    plain = {dim: model.encode(sentences, dim=dim) for dim in dims}
    want = {dim: expected(model, adaptor, sentences, dim) for dim in dims}
    model.set_adaptor(adaptor)
    assert model.config.adaptor["adapted_dimensions"] == dims[1::2]
    for dim in dims:
        got = model.encode(sentences, dim=dim)
        assert torch.allclose(got, want[dim], atol=ATOL)
        # gated sizes are exactly plain truncation; adapted ones differ from it
        assert torch.allclose(got, plain[dim], atol=ATOL) == (dim not in dims[1::2])
    inputs = model.tokenizer(sentences, padding=True, return_tensors="pt")
    assert torch.allclose(model(**inputs, dim=dims[1]).embeddings, want[dims[1]], atol=ATOL)
    model.config.truncate_dim = dims[1]
    assert torch.allclose(model.encode(sentences), want[dims[1]], atol=ATOL)
    model.set_adaptor(None)  # removed: back to the plain model
    assert model.config.adaptor is None and torch.allclose(model.encode(sentences, dim=dims[1]), plain[dims[1]])


@pytest.mark.slow
@ADAPTORS
def test_saved_with_the_weights_gate_included(make_model, sentences, tmp_path, build):
    model = make_model()
    adaptor = build()
    mapped = {dim: expected(model, adaptor, sentences, dim) for dim in DIMS}  # each size through its own map
    model.set_adaptor(adaptor)
    want = {dim: model.encode(sentences, dim=dim) for dim in DIMS}
    assert all(torch.allclose(want[dim], mapped[dim], atol=ATOL) for dim in DIMS)
    model.save_pretrained(tmp_path / "adapted")
    saved = json.loads((tmp_path / "adapted" / "config.json").read_text())
    assert saved["adaptor"]["adapted_dimensions"] == [16, 4]
    assert (tmp_path / "adapted" / "modeling_matryoshka_adaptor.py").is_file()
    card = (tmp_path / "adapted" / "README.md").read_text()
    assert ("one map per size: 16 mlp, 4 pca" in card) == (build is per_size_adaptor)  # the card names the maps
    for loaded in (
        MatryoshkaModel.from_pretrained(tmp_path / "adapted"),
        AutoModel.from_pretrained(tmp_path / "adapted"),
    ):
        assert loaded.adaptor.config.adapted_dimensions == [16, 4]
        assert loaded.adaptor.config.chosen == model.adaptor.config.chosen
        for dim in DIMS:
            assert torch.allclose(loaded.encode(sentences, dim=dim), want[dim], atol=ATOL)


@pytest.mark.slow
@ADAPTORS
def test_sentence_transformers_folder_and_remote_code_apply_it(make_model, sentences, tmp_path, build):
    from sentence_transformers import SentenceTransformer

    model = make_model()
    model.set_adaptor(build())
    want = {dim: model.encode(sentences, dim=dim) for dim in DIMS}
    folder = tmp_path / "adapted"
    model.save_pretrained(folder)
    st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    for dim in DIMS:
        assert torch.allclose(st.encode(sentences, dim=dim, convert_to_tensor=True), want[dim], atol=ATOL)
    assert torch.allclose(st.encode(sentences, convert_to_tensor=True), want[32], atol=ATOL)
    fixed = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True, truncate_dim=16)
    assert torch.allclose(fixed.encode(sentences, convert_to_tensor=True), want[16], atol=ATOL)
    script = f"""
        import torch
        from transformers import AutoModel
        from sentence_transformers import SentenceTransformer
        want = {{d: torch.tensor(v) for d, v in {({d: v.tolist() for d, v in want.items()})!r}.items()}}
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        st = SentenceTransformer({str(folder)!r}, device="cpu", trust_remote_code=True)
        for dim in {DIMS!r}:
            assert torch.allclose(model.encode({sentences!r}, dim=dim), want[dim], atol={ATOL}), dim
            got = st.encode({sentences!r}, dim=dim, convert_to_tensor=True)
            assert torch.allclose(got, want[dim], atol={ATOL}), dim
        print("REMOTE-OK")
        """
    run_without_mrl_text(script, tmp_path)


@pytest.mark.slow
def test_add_adaptor_fits_on_texts_and_attaches(make_model, tmp_path):
    model = make_model()
    corpus, sample = random_texts(240), random_texts(6, seed=1)
    plain = {dim: model.encode(sample, dim=dim) for dim in DIMS}
    pairs = list(zip(random_texts(40, seed=2), corpus[:40]))
    adaptor = mrl_text.add_adaptor(model, corpus, pairs, seed=0, **FAST)
    assert model.adaptor is adaptor and model.config.adaptor["adapted_dimensions"] == adaptor.config.adapted_dimensions
    summary = adaptor.config.fit_summary
    assert summary["corpus_texts"] == 240 and summary["pairs"] == 40 and summary["objective"] == "both"
    assert set(summary["validation"]) == {str(d) for d in DIMS}
    for dim in DIMS:  # the gate: a size the adaptor did not win keeps plain truncation
        same = torch.allclose(model.encode(sample, dim=dim), plain[dim], atol=ATOL)
        assert same == (dim not in adaptor.config.adapted_dimensions)
    model.save_pretrained(tmp_path / "adapted")
    card = (tmp_path / "adapted" / "README.md").read_text()
    assert "## Adaptor" in card and "240 corpus texts" in card and "40 (query, document) pairs" in card
    assert "| size | plain truncation | adaptor | used |" in card
    for dim in DIMS:
        scores = summary["validation"][str(dim)]
        used = f"adaptor ({scores['candidate']})" if dim in adaptor.config.adapted_dimensions else "plain truncation"
        assert f"| {dim} | {100 * scores['truncation']:.2f} | {100 * scores['adaptor']:.2f} | {used} |" in card


@pytest.mark.slow
def test_plain_encoder_gets_the_usual_sizes(tiny_tokenizer):
    torch.manual_seed(0)
    model = MatryoshkaModel(MatryoshkaConfig(encoder=tiny_bert_config(hidden_size=64, vocab_size=len(tiny_tokenizer))))
    model.tokenizer = tiny_tokenizer
    mrl_text.add_adaptor(model, random_texts(200), **FAST)
    assert model.config.matryoshka_dimensions == [64, 32, 16]
    assert model.adaptor.config.matryoshka_dimensions == [64, 32, 16]


@pytest.mark.slow
def test_failed_fit_or_bad_adaptor_leaves_the_model_unchanged(make_model, sentences, monkeypatch):
    from mrl_text.adaptor import attach as adaptor_model

    model = make_model()
    before = model.encode(sentences, dim=4)

    def explode(*args, **kwargs):
        raise RuntimeError("fit failed")

    monkeypatch.setattr(adaptor_model, "fit", explode)
    with pytest.raises(RuntimeError, match="fit failed"):
        mrl_text.add_adaptor(model, random_texts(200), matryoshka_dimensions=[32, 12], **FAST)
    assert model.adaptor is None and model.config.adaptor is None and model.config.matryoshka_dimensions == DIMS
    with pytest.raises(ValueError, match="embedding size is 32"):
        mrl_text.add_adaptor(model, adaptor=MatryoshkaAdaptor(MatryoshkaAdaptorConfig(48, [48, 8])))
    with pytest.raises(ValueError, match=r"corpus\[1\] is None"):
        mrl_text.add_adaptor(model, ["fine", None])
    with pytest.raises(ValueError, match=r"pairs\[0\]"):
        mrl_text.add_adaptor(model, random_texts(200), [("only a query",)])
    with pytest.raises(ValueError, match="corpus of texts"):
        mrl_text.add_adaptor(model)
    assert model.adaptor is None and torch.equal(model.encode(sentences, dim=4), before)


def test_config_field_is_validated():
    encoder = tiny_bert_config()
    good = gated_adaptor().config.to_dict()
    config = MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=DIMS, adaptor=good)
    assert config.adaptor["adapted_dimensions"] == [16, 4]
    with pytest.raises(ValueError, match="adaptor config dict"):
        MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=DIMS, adaptor="adaptor.safetensors")
    with pytest.raises(ValueError, match=r"sizes \[4\] that are not among"):
        MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=[32, 16, 8], adaptor=good)
    with pytest.raises(ValueError, match="incomplete"):
        MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=DIMS, adaptor={"hidden_size": 8})
    with pytest.raises(ValueError, match="adapted_dimensions"):
        MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=DIMS, adaptor={**good, "adapted_dimensions": [12]})


def test_export_refuses_an_adapted_model(make_model, tmp_path):
    model = make_model()
    model.set_adaptor(gated_adaptor())
    with pytest.raises(ValueError, match="adaptor .*save_pretrained"):
        mrl_text.export_model(model, tmp_path / "exported")


@pytest.mark.slow
def test_cli_adapt(make_model, sentences, tmp_path, capsys):
    model = make_model()
    model.save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_texts(200)) + "\n\n")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "query\tdocument\n" + "".join(f"{q}\t{d}\n" for q, d in zip(random_texts(30, 3), random_texts(30, 4)))
    )
    out = tmp_path / "adapted"
    args = ["adapt", str(tmp_path / "model"), "--corpus", str(corpus), "--pairs", str(pairs), "--out", str(out),
            "--epochs", "2", "--supervised-epochs", "2", "--device", "cpu"]
    assert main(args) == 0
    loaded = MatryoshkaModel.from_pretrained(out)
    summary = loaded.adaptor.config.fit_summary
    assert summary["corpus_texts"] == 200 and summary["pairs"] == 30 and summary["description"] == "corpus.txt"
    assert "## Adaptor" in (out / "README.md").read_text()
    printed = capsys.readouterr().out
    # A header names the gate's metrics; every size prints both of them, truncation beside adaptor.
    assert "nDCG@10 trunc." in printed and summary["validation_metric"] in printed
    for dim in DIMS:
        row = next(line.split() for line in printed.splitlines() if line.split()[:1] == [str(dim)])
        scores = summary["validation"][str(dim)]
        assert [float(x) for x in row[1:3]] == pytest.approx([scores["truncation"], scores["adaptor"]], abs=1e-4)
        assert row[3:] == ([scores["candidate"], "adaptor"] if scores["adapted"] else ["plain", "truncation"])
    with pytest.raises(SystemExit):  # the folder is not empty now
        main(args)
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"pairs": "one field only\n"}, "line 1: expected query<TAB>document"),
        ({"pairs": "a\tb\tc\n"}, "got 3 field"),
        ({"corpus": "\n\n"}, "no texts found"),
        ({"missing": True}, "no such file"),
    ],
)
def test_cli_adapt_bad_files(tmp_path, capsys, bad, message):
    corpus, pairs = tmp_path / "corpus.txt", tmp_path / "pairs.tsv"
    corpus.write_text(bad.get("corpus", "a text\nanother text\n"))
    pairs.write_text(bad.get("pairs", "q\td\n"))
    args = [
        "adapt",
        str(tmp_path / "no-model"),
        "--corpus",
        str(tmp_path / "absent.txt" if "missing" in bad else corpus),
        "--pairs",
        str(pairs),
        "--out",
        str(tmp_path / "out"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_adapt_wraps_a_plain_encoder(tiny_tokenizer, tmp_path):
    from transformers import BertModel

    torch.manual_seed(0)
    BertModel(tiny_bert_config(hidden_size=64, vocab_size=len(tiny_tokenizer))).save_pretrained(tmp_path / "plain")
    tiny_tokenizer.save_pretrained(tmp_path / "plain")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": str(i), "title": "", "text": t}) + "\n" for i, t in enumerate(random_texts(200)))
    )
    assert main(["adapt", str(tmp_path / "plain"), "--corpus", str(corpus), "--out", str(tmp_path / "adapted"),
                 "--epochs", "2", "--device", "cpu"]) == 0
    loaded = AutoModel.from_pretrained(tmp_path / "adapted")
    assert loaded.config.matryoshka_dimensions == [64, 32, 16] and loaded.adaptor is not None
    assert loaded.adaptor.config.fit_summary["objective"] == "unsupervised"


@pytest.mark.slow
def test_attached_adaptor_is_frozen_and_refits_from_a_copy(make_model):
    model = make_model()
    corpus = random_texts(200)
    first = mrl_text.add_adaptor(model, corpus, **FAST)
    assert not any(p.requires_grad for p in first.parameters())
    before = {k: v.clone() for k, v in first.state_dict().items()}
    pairs = list(zip(random_texts(30, seed=5), corpus[:30]))
    second = mrl_text.add_adaptor(model, corpus, pairs, adaptor=model.adaptor, objective="supervised", **FAST)
    assert model.adaptor is second and second is not first
    assert second.config.fit_summary["objective"] == "supervised"
    assert all(torch.equal(before[k], v) for k, v in first.state_dict().items())  # the original is untouched


@pytest.mark.slow
@ADAPTORS
def test_evaluators_and_calibration_see_the_adapted_sizes(make_model, sentences, build):
    """Encode once, score every size: with an adaptor a size is not a prefix of the full size, so the evaluators
    and the int8 calibration must read each size as `encode(dim=)` returns it, not truncate the full one."""
    from mrl_text.evaluation import RetrievalEvaluator, STSEvaluator, evaluate
    from mrl_text.metrics import spearman
    from mrl_text.models.quantization import calibration_ranges

    model = make_model()
    model.set_adaptor(build())
    texts = random_texts(12, seed=3)
    firsts, seconds, scores = texts[:6], texts[6:], [0.5, 4.0, 2.5, 1.0, 3.0, 5.0]
    results = evaluate(model, [STSEvaluator(firsts, seconds, scores, name="sts")])
    for dim in DIMS:
        a, b = model.encode(firsts, dim=dim), model.encode(seconds, dim=dim)
        cosine = torch.nn.functional.cosine_similarity(a, b).tolist()
        # encoded in other batches than `evaluate`'s: float32 sums in another order (thread count), ~1e-7 per cosine
        assert results.value("sts", "spearman", dim) == pytest.approx(spearman(cosine, scores), abs=1e-5), dim
    corpus = {f"d{i}": text for i, text in enumerate(sentences)}
    queries = {"q0": sentences[0], "q1": sentences[3]}
    retrieval = RetrievalEvaluator(corpus, queries, {"q0": {"d0": 1}, "q1": {"d3": 1}}, name="ir")
    assert all(evaluate(model, [retrieval]).value("ir", "ndcg@10", dim) == pytest.approx(1.0) for dim in DIMS)
    measured = model.calibrate_quantization(texts)
    for dim in (16, 4):  # adapted sizes: ranges of the adapted embedding
        assert torch.allclose(measured[dim], calibration_ranges(model.encode(texts, dim=dim)), atol=1e-5)


def test_cli_adapt_writes_beside_and_renames_and_cleans_what_a_crash_left(make_model, tmp_path, capsys, monkeypatch):
    """A run killed while saving leaves --out as it was (absent here) and a staging folder that the next run removes;
    the rerun writes the whole model, whose card names --out."""
    model = make_model()
    model.save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_texts(120)) + "\n")
    out = tmp_path / "adapted"
    args = ["adapt", str(tmp_path / "model"), "--corpus", str(corpus), "--out", str(out), "--epochs", "1",
            "--device", "cpu", "--rotation", "none"]
    save_pretrained = MatryoshkaModel.save_pretrained

    def killed_midway(self, directory, *a, **kw):
        (Path(directory) / "config.json").write_text("{}")  # config written, weights not yet
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(MatryoshkaModel, "save_pretrained", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    assert not out.exists() and not list(tmp_path.glob(".adapted.*"))
    stale = tmp_path / ".adapted.adapt-999999999-deadbeef"  # what kill -9 leaves: its process is gone
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    monkeypatch.setattr(MatryoshkaModel, "save_pretrained", save_pretrained)
    assert main(args) == 0
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["adapted", "corpus.txt", "model"]
    loaded = MatryoshkaModel.from_pretrained(out)
    assert loaded.adaptor is not None and (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert ".adapted." not in card and "adapt-" not in card
