"""MTEB at every size (`mrl_text.evaluation.mteb`): tiny local tasks through MTEB's task classes, offline."""

import json
from pathlib import Path

import pytest

pytest.importorskip("mteb", reason='mteb is not installed (pip install "mrl-text[mteb]")')

from mrl_text.data import load_beir, load_sts  # noqa: E402
from mrl_text.evaluation import RetrievalEvaluator, STSEvaluator, as_embedder, evaluate  # noqa: E402
from mrl_text.evaluation.mteb import (  # noqa: E402
    FullSizeCache,
    MatryoshkaEncoder,
    evaluate_mteb,
    local_task,
    resolve_tasks,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

STS = (
    ["a man is playing a guitar", "the dog runs", "it is raining today", "what is my balance", "a cat sleeps",
     "the sun is bright"],
    ["a man plays music", "a cat is sleeping", "the weather is bad", "help with my account", "a kitten naps",
     "it is a sunny day"],
    [4.0, 0.5, 3.0, 2.0, 4.5, 3.5],
)
CORPUS = {"d0": "the dog runs in the park", "d1": "a woman is eating bread", "d2": "music with a guitar",
          "d3": "the sun is lovely", "d4": "rain falls on the city"}
QUERIES = {"q1": "dog park", "q2": "guitar music", "q3": "weather rain", "q4": "no judgement"}
QRELS = {"q1": {"d0": 1}, "q2": {"d2": 1}, "q3": {"d4": 1, "d3": 1}}


@pytest.fixture
def tasks():
    return [local_task("tiny-sts", STS), local_task("tiny-retrieval", (CORPUS, QUERIES, QRELS))]


class CountingEmbedder:
    """Counts every text the model is asked to encode (through the embedder's own encode function)."""

    def __init__(self, model):
        self.embedder = as_embedder(model)
        self.texts = []
        encode = self.embedder._encode_fn

        def counted(texts):
            self.texts.extend(texts)
            return encode(texts)

        self.embedder._encode_fn = counted


def test_every_size_scored_each_text_encoded_once(make_model, tasks, tmp_path):
    counting = CountingEmbedder(make_model())
    report = evaluate_mteb(counting.embedder, tasks, output_folder=tmp_path / "mteb")
    dims = [32, 16, 8, 4]
    assert report.results.dims() == dims
    assert report.results.tasks == ["tiny-sts", "tiny-retrieval"]
    assert report.results.primary_metric("tiny-sts") == "cosine_spearman"
    assert report.results.task_type("tiny-retrieval") == "text-retrieval"
    # each distinct text once, whatever the number of sizes
    distinct = set(STS[0] + STS[1]) | set(CORPUS.values()) | {QUERIES[q] for q in QRELS}
    assert sorted(counting.texts) == sorted(distinct)
    assert report.encoded_texts == {"tiny-sts": 12, "tiny-retrieval": 8}
    # MTEB's own JSON per size, in MTEB's experiment layout
    files = {(p.parent.name, p.name) for p in (tmp_path / "mteb").rglob("tiny-*.json")}
    assert files == {(f"embed_dim_{d}", f"{t}.json") for d in dims for t in ("tiny-sts", "tiny-retrieval")}
    saved = json.loads(next(f for f in (tmp_path / "mteb").rglob("embed_dim_8/tiny-sts.json")).read_text())
    assert saved["scores"]["test"][0]["main_score"] == pytest.approx(  # MTEB's files round to 6 decimals
        report.results.value("tiny-sts", "cosine_spearman", 8), abs=1e-6)
    assert "| tiny-retrieval | ndcg_at_10 |" in report.to_markdown()
    report.save(tmp_path / "report")
    assert (tmp_path / "report" / "results.png").stat().st_size > 0


def test_scores_agree_with_mrl_text_evaluators(make_model, tasks):
    model = make_model()
    report = evaluate_mteb(model, tasks, dims=[32, 8])
    ours = evaluate(model, [STSEvaluator(*STS, name="sts"), RetrievalEvaluator(CORPUS, QUERIES, QRELS, name="ret")],
                    dims=[32, 8])
    for dim in (32, 8):  # MTEB rounds its scores to 5 or 6 decimals
        assert report.results.value("tiny-sts", "cosine_spearman", dim) == pytest.approx(
            ours.value("sts", "spearman", dim), abs=1e-5)
        assert report.results.value("tiny-retrieval", "ndcg_at_10", dim) == pytest.approx(
            ours.value("ret", "ndcg@10", dim), abs=1e-5)


def test_truncation_matches_the_model_at_that_size(make_model):
    model = make_model()
    cache = FullSizeCache(as_embedder(model))
    encoder = MatryoshkaEncoder(model, 8, cache)
    texts = ["one text", "another text", "one text"]
    embeddings = encoder.encode([{"text": texts}], task_metadata=None, hf_split="test", hf_subset="default")
    assert embeddings.shape == (3, 8) and len(cache) == 2
    expected = model.encode(texts, dim=8, max_length=encoder.embedder.max_length)
    assert embeddings == pytest.approx(expected.numpy(), abs=1e-5)


def test_bad_input(make_model, tasks):
    model = make_model()
    with pytest.raises(ValueError, match="Unknown MTEB task 'SciFactt'.*SciFact.*NAME=PATH"):
        resolve_tasks(["SciFactt"])
    with pytest.raises(ValueError, match="64 is larger than the embedding size 32"):
        evaluate_mteb(model, tasks, dims=[64])
    with pytest.raises(ValueError, match="Banking77Classification is an MTEB Classification task.*STS or retrieval|"
                       "registered MTEB Classification"):
        local_task("Banking77Classification", STS)
    import mteb

    with pytest.raises(ValueError, match="is an MTEB InstructionReranking task.*evaluate_mteb runs text tasks"):
        resolve_tasks([mteb.get_task("Core17InstructionRetrieval")])
    with pytest.raises(ConnectionError, match="could not be loaded from the Hub.*local_task"):
        evaluate_mteb(model, ["STS12"], dims=[8])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        local_task("SciFact", "/no/such/folder")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} (the shared development data) is absent")
def test_registered_tasks_from_local_files(make_model):
    sts = load_sts(SHARED_DATA / "stsb" / "test.tsv")
    corpus, queries, qrels = load_beir(SHARED_DATA / "scifact")
    # a slice keeps it quick: the first 100 pairs, 20 queries and their documents plus 200 others
    sts = tuple(column[:100] for column in sts)
    qrels = dict(list(qrels.items())[:20])
    keep = {d for docs in qrels.values() for d in docs} | set(list(corpus)[:200])
    tasks = [local_task("STSBenchmark", sts), local_task("SciFact", ({d: corpus[d] for d in keep}, queries, qrels))]
    report = evaluate_mteb(make_model(), tasks, dims=[32, 8])
    assert report.results.primary_metric("STSBenchmark") == "cosine_spearman"
    assert report.results.primary_metric("SciFact") == "ndcg_at_10"
    assert report.eval_datasets["SciFact"]["id"] is None  # local data: not MTEB's Hub dataset
    assert report.task_results[8][1].dataset_revision.startswith("local-")


def test_command_line(make_model, tmp_path, capsys):
    import mrl_text_cli

    make_model().save_pretrained(tmp_path / "model")
    (tmp_path / "sts.tsv").write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\t{b}\t{s}\n" for a, b, s in zip(*STS)))
    out = tmp_path / "report"
    argv = ["mteb", str(tmp_path / "model"), "--tasks", f"STSBenchmark={tmp_path / 'sts.tsv'}", "--dims", "32", "8",
            "--out", str(out)]
    assert mrl_text_cli.main(argv) == 0
    assert "| STSBenchmark | cosine_spearman |" in capsys.readouterr().out
    assert {p.parent.name for p in (out / "mteb").rglob("STSBenchmark.json")} == {"embed_dim_32", "embed_dim_8"}
    assert "Command: `mrl-text mteb" in (out / "results.md").read_text()
    assert (out / "results.png").is_file() and json.loads((out / "results.json").read_text())["rows"]
    with pytest.raises(SystemExit):  # a non-empty --out without --overwrite
        mrl_text_cli.main(argv)
    assert "exists and is not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mrl_text_cli.main(["mteb", str(tmp_path / "model"), "--tasks", "SciFactt", "--out", str(tmp_path / "r2")])
    assert "Unknown MTEB task 'SciFactt'" in capsys.readouterr().err
