import json
import math

import numpy as np
import pytest
import torch

from mrl_text import metrics
from mrl_text.data import load_beir, load_classification, load_sts
from mrl_text.evaluation import (
    ClassificationEvaluator,
    Embedder,
    Results,
    RetrievalEvaluator,
    STSEvaluator,
    as_embedder,
    evaluate,
)
from mrl_text.training.trainer import metrics_for_trainer

from .conftest import SHARED_DATA, build_tokenizer, tiny_bert_config


class CountingEmbedder(Embedder):
    """Deterministic random vectors per text; records every text it is asked to encode."""

    def __init__(self, full_dim=16, dims=(16, 8, 4), normalize=True, vectors=None):
        self.calls = []
        self.vectors = dict(vectors or {})

        def encode_fn(texts):
            self.calls.append(list(texts))
            return torch.stack([self.vector(t) for t in texts])

        super().__init__(encode_fn, full_dim, list(dims), normalize, "counting")

    def vector(self, text):
        if text not in self.vectors:
            generator = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(text)))
            self.vectors[text] = torch.randn(self.full_dim, generator=generator)
        return self.vectors[text]


# --- metric math -------------------------------------------------------------------------------------------------


def test_retrieval_metrics_hand_computed():
    relevance = {"a": 1}
    assert metrics.ndcg_at_k(["a", "b", "c"], relevance) == 1.0
    assert metrics.ndcg_at_k(["b", "a"], relevance) == pytest.approx(1 / math.log2(3))
    assert metrics.mrr_at_k(["b", "c", "a"], relevance) == pytest.approx(1 / 3)
    assert metrics.mrr_at_k(["b"] * 10 + ["a"], relevance) == 0.0  # beyond the cutoff
    graded = {"a": 2, "b": 1}
    ideal = 2 + 1 / math.log2(3)
    assert metrics.ndcg_at_k(["b", "a"], graded) == pytest.approx((1 + 2 / math.log2(3)) / ideal)
    assert metrics.recall_at_k(["x", "a"], {"a": 1, "b": 1, "z": 0}, k=100) == 0.5
    scores = metrics.retrieval_scores([["a", "b"], ["c", "d"]], [{"a": 1}, {"d": 1}])
    assert scores["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert scores["mrr@10"] == pytest.approx(0.75)
    assert scores["recall@100"] == 1.0
    with pytest.raises(ValueError, match="relevant"):
        metrics.retrieval_scores([["a"]], [{"a": 0}])


def test_correlations_match_scipy_and_hand_cases():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert metrics.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert metrics.pearson(x, y) == pytest.approx(pearsonr(x, y).statistic)
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)  # monotone: ranks agree
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.accuracy(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75


# --- evaluators --------------------------------------------------------------------------------------------------


def test_each_text_is_encoded_once_for_all_sizes():
    embedder = CountingEmbedder(dims=(16, 8, 4, 2))
    s1 = ["a cat", "a dog", "the sun", "a cat"]
    s2 = ["a dog", "a kitten", "the moon", "rain"]
    rows = STSEvaluator(s1, s2, [1.0, 2.0, 3.0, 0.5], name="sts").evaluate(embedder)
    assert len(embedder.calls) == 1
    encoded = embedder.calls[0]
    assert sorted(encoded) == sorted(set(s1 + s2))  # duplicates ("a cat", "a dog") encoded once
    assert {(r["metric"], r["dim"]) for r in rows} == {(m, d) for m in ("spearman", "pearson") for d in (16, 8, 4, 2)}
    assert all(r["model"] == "counting" and r["task"] == "sts" for r in rows)


def test_sts_scores_each_size_from_the_prefix():
    embedder = CountingEmbedder(dims=(16, 4))
    s1, s2 = [f"left {i}" for i in range(12)], [f"right {i}" for i in range(12)]
    gold = [float(i % 5) for i in range(12)]
    rows = STSEvaluator(s1, s2, gold).evaluate(embedder)
    for dim in (16, 4):
        a = torch.stack([embedder.vector(t)[:dim] for t in s1])
        b = torch.stack([embedder.vector(t)[:dim] for t in s2])
        cosine = torch.nn.functional.cosine_similarity(a, b).numpy()
        from scipy.stats import spearmanr

        got = next(r["value"] for r in rows if r["dim"] == dim and r["metric"] == "spearman")
        assert got == pytest.approx(spearmanr(cosine, gold).statistic, abs=1e-6)


def test_retrieval_perfect_ranking_and_chunking_agree():
    corpus = {f"d{i}": f"document number {i}" for i in range(40)}
    queries = {f"q{i}": f"document number {i}" for i in range(0, 40, 4)}  # each query is its document's text
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(0, 40, 4)}
    embedder = CountingEmbedder(dims=(16, 8))
    rows = RetrievalEvaluator(corpus, queries, qrels, chunk_size=7).evaluate(embedder)
    assert len(embedder.calls) == 1 and len(embedder.calls[0]) == 40  # queries share their documents' text
    for row in rows:
        assert row["value"] == pytest.approx(1.0), row

    # chunked top-k merge gives exactly the full-matrix top-k
    chunked = RetrievalEvaluator(corpus, queries, qrels, chunk_size=3, query_chunk_size=2)
    q, d = torch.randn(10, 16), torch.randn(40, 16)
    rows = torch.arange(50)
    top = chunked.search(torch.cat([q, d]), rows[:10], rows[10:], 8, k=5)
    unit = torch.nn.functional.normalize
    expected = (unit(q[:, :8], dim=-1) @ unit(d[:, :8], dim=-1).T).topk(5, dim=1).indices
    assert torch.equal(top, expected)


def test_classification_probe_on_separable_embeddings():
    texts = [f"text {i}" for i in range(40)]
    labels = ["pos" if i % 2 else "neg" for i in range(40)]
    vectors = {
        t: torch.tensor([1.0 if y == "pos" else -1.0] + [0.1 * (i % 3)] * 7)
        for i, (t, y) in enumerate(zip(texts, labels))
    }
    embedder = CountingEmbedder(full_dim=8, dims=(8, 2), vectors=vectors)
    evaluator = ClassificationEvaluator(texts[:30], labels[:30], texts[30:], labels[30:], knn=True, knn_k=3)
    rows = evaluator.evaluate(embedder)
    assert {(r["metric"], r["dim"]): r["value"] for r in rows} == {
        ("accuracy", 8): 1.0, ("knn_accuracy", 8): 1.0, ("accuracy", 2): 1.0, ("knn_accuracy", 2): 1.0
    }
    assert len(embedder.calls) == 1


@pytest.mark.slow
def test_matryoshka_model_prefix_equals_encode_at_that_size(make_model, sentences):
    model = make_model(truncate_dim=8)  # truncate_dim must not shrink what the evaluators encode
    embedder = as_embedder(model)
    assert embedder.dims == [32, 16, 8, 4] and embedder.normalize
    full = embedder.encode(sentences)
    assert full.shape == (len(sentences), 32)
    for dim in (16, 4):
        torch.testing.assert_close(
            embedder.truncate(full, dim), model.encode(sentences, dim=dim), atol=1e-5, rtol=1e-5
        )


def test_sizes_larger_than_the_model_are_rejected(make_model):
    with pytest.raises(ValueError, match="size=64 .*embedding size 32"):
        as_embedder(make_model(), dims=[64, 16])
    with pytest.raises(ValueError, match="not a positive integer"):
        as_embedder(make_model(), dims=[0])
    with pytest.raises(TypeError, match="Cannot evaluate"):
        as_embedder(object())


def test_evaluator_input_errors():
    with pytest.raises(ValueError, match="sentences1 is empty"):
        STSEvaluator([], [], [], name="empty")
    with pytest.raises(ValueError, match="differ in length"):
        STSEvaluator(["a"], ["b", "c"], [1.0])
    with pytest.raises(ValueError, match="unknown queries"):
        RetrievalEvaluator({"d": "x"}, {"q": "y"}, {"q": {"missing-doc": 1}})
    with pytest.raises(ValueError, match="single class"):
        ClassificationEvaluator(["a", "b"], [1, 1], ["c"], [1])
    with pytest.raises(ValueError, match="distinct"):
        evaluate(CountingEmbedder(), [STSEvaluator(["a"], ["b"], [1.0]), STSEvaluator(["a"], ["b"], [1.0])])


@pytest.mark.slow
def test_evaluate_loads_plain_encoder_and_sentence_transformers_folders(tmp_path, sentences):
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertModel

    torch.manual_seed(0)
    tokenizer = build_tokenizer(tmp_path / "plain")
    BertModel(tiny_bert_config(vocab_size=len(tokenizer)), add_pooling_layer=False).save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    plain = as_embedder(tmp_path / "plain", dims=[32, 8], max_length=32)
    assert (
        plain.dims == [32, 8] and plain.normalize and plain.name == "plain" and plain.source == str(tmp_path / "plain")
    )
    plain_full = plain.encode(sentences)
    torch.testing.assert_close(plain_full.norm(dim=-1), torch.ones(len(sentences)))

    transformer = models.Transformer(str(tmp_path / "plain"), max_seq_length=32)
    st = SentenceTransformer(modules=[transformer, models.Pooling(32, "mean"), models.Normalize()], truncate_dim=8)
    st.save(str(tmp_path / "st"))
    st_embedder = as_embedder(tmp_path / "st", dims=[32, 16])
    assert st_embedder.normalize and st_embedder.full_dim == 32  # truncate_dim=8 does not shrink the evaluation
    assert st_embedder.name == "st"  # a folder's name, never this machine's path
    # the same weights with mean pooling + normalize: both routes give the same embeddings
    torch.testing.assert_close(st_embedder.encode(sentences), plain_full, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_batches_group_texts_by_tokens_not_characters(make_model):
    """Padding costs as much as text: batches are formed by token counts, so a batch pads almost nothing."""
    few_long_words, many_letters = "sleeping playing eating", "b c d e f g h i j k"  # 3 tokens / 23 chars; 10 / 19
    letters, short = "umbrella", "a b"  # an unknown word in letters: 8 tokens / 8 chars; 2 / 3
    texts = [few_long_words, many_letters, letters, short]
    embedder = as_embedder(make_model(), batch_size=2, max_length=32)
    batches = [[texts[i] for i in rows] for rows in embedder.batches(texts)]
    assert batches == [[many_letters, letters], [few_long_words, short]]  # by characters: 10+3 with 8+2
    model = make_model()
    torch.testing.assert_close(
        embedder.encode(texts), model.encode(texts, batch_size=1, max_length=32), atol=1e-5, rtol=1e-4
    )


# --- results -----------------------------------------------------------------------------------------------------


def _results():
    embedder = CountingEmbedder(dims=(16, 4))
    s1, s2 = [f"left {i}" for i in range(8)], [f"right {i}" for i in range(8)]
    return evaluate(embedder, [STSEvaluator(s1, s2, list(range(8)), name="stsb")])


@pytest.mark.slow
def test_results_round_trip_markdown_and_trainer_keys(tmp_path):
    results = _results()
    value = results.value("stsb", "spearman", 4)
    results.to_json(tmp_path / "results.json")
    loaded = Results.from_json(tmp_path / "results.json")
    assert loaded.rows == results.rows and loaded.primary_metrics == {"stsb": "spearman"}
    other = Results([{**r, "model": "baseline", "value": 0.5} for r in results.rows], results.primary_metrics)
    both = Results.concat([results, other])
    assert both.models == ["counting", "baseline"]
    with pytest.raises(KeyError, match="model="):
        both.value("stsb", "spearman", 4)
    assert both.value("stsb", "spearman", 4, model="baseline") == 0.5
    markdown = both.to_markdown()
    assert markdown.index("### stsb: spearman") < markdown.index("### stsb: pearson")
    assert "| model | 16 | 4 |" in markdown
    assert f"| {100 * value:.2f} |" in markdown.splitlines()[4] and "| baseline | 50.00 | 50.00 |" in markdown
    keys = metrics_for_trainer(results)
    assert keys["eval_stsb_spearman_4"] == value and len(keys) == 4
    assert metrics_for_trainer([{"model": "m", "task": "sf", "metric": "ndcg@10", "dim": 8, "value": 1}]) == {
        "eval_sf_ndcg_at_10_8": 1
    }
    png = both.plot(tmp_path / "plot.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "plot.png").read_bytes() == png


def test_results_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        Results.from_json(tmp_path / "results.json")
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [{"model": "m"}]}))
    with pytest.raises(ValueError, match="lacks"):
        Results.from_json(tmp_path / "bad.json")


# --- loaders -----------------------------------------------------------------------------------------------------


def _write_beir(directory, qrels_rows):
    (directory / "qrels").mkdir(parents=True)
    (directory / "corpus.jsonl").write_text(
        '{"_id": "007", "title": "Bond", "text": "a spy"}\n{"_id": "d2", "title": "", "text": "plain text"}\n'
    )
    (directory / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "who is the spy"}\n{"_id": "q2", "text": "unused"}\n'
    )
    (directory / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(qrels_rows))


def test_load_beir(tmp_path):
    _write_beir(tmp_path / "ok", ["q1\t007\t1\n", "q1\td2\t0\n"])
    corpus, queries, qrels = load_beir(tmp_path / "ok")
    assert corpus == {"007": "Bond a spy", "d2": "plain text"}  # ids stay strings, title joined when present
    assert queries == {"q1": "who is the spy"}  # only queries with qrels
    assert qrels == {"q1": {"007": 1, "d2": 0}}

    _write_beir(tmp_path / "bad", ["q1\tnope\t1\n", "q9\td2\t1\n"])
    with pytest.raises(ValueError, match=r"qrels.test\.tsv.*queries missing .*\['q9'\]"):
        load_beir(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_beir(tmp_path / "bad" / "qrels")
    with pytest.raises(FileNotFoundError, match="qrels.dev.tsv"):
        load_beir(tmp_path / "ok", split="dev")


def test_load_sts_and_classification_errors_name_file_and_columns(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\na cat\ta dog\t2.5\n")
    assert load_sts(path) == (["a cat"], ["a dog"], [2.5])
    bad = tmp_path / "bad.tsv"
    bad.write_text("text_a\ttext_b\tscore\nx\ty\t1\n")
    with pytest.raises(ValueError, match=r"bad\.tsv.*missing column.*sentence1"):
        load_sts(bad)
    with pytest.raises(ValueError, match=r"bad\.tsv.*'text'"):
        load_classification(bad)
    assert load_classification(bad, text_column="text_a", label_column="score") == (["x"], [1])


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "stsb").is_dir(), reason="shared dev data absent (../shared/data)")
def test_real_data_smoke(make_model):
    model = make_model(max_seq_length=48)
    s1, s2, scores = load_sts(SHARED_DATA / "stsb" / "test.tsv")
    corpus, queries, qrels = load_beir(SHARED_DATA / "scifact")
    keep = dict(list(qrels.items())[:5])
    docs = {d: corpus[d] for rel in keep.values() for d in rel} | dict(list(corpus.items())[:40])
    results = evaluate(
        model,
        [
            STSEvaluator(s1[:40], s2[:40], scores[:40], name="stsb"),
            RetrievalEvaluator(docs, queries, keep, name="scifact"),
        ],
        dims=[32, 8],
    )
    assert {(r["task"], r["dim"]) for r in results.rows} >= {("stsb", 32), ("scifact", 8)}
    assert all(-1 <= r["value"] <= 1 for r in results.rows)


def test_shipped_evaluate_modules_load_offline_and_match(monkeypatch):
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    correlation = metrics.load_metric("correlation").compute(predictions=[0.1, 0.4, 0.3, 0.9], references=[1, 3, 2, 4])
    assert correlation["spearman"] == pytest.approx(1.0)
    assert correlation["pearson"] == pytest.approx(metrics.pearson([0.1, 0.4, 0.3, 0.9], [1, 3, 2, 4]))
    retrieval = metrics.load_metric("retrieval").compute(
        predictions=[["d2", "d1"], ["d3"]], references=[["d1"], ["d3", "d4"]], relevance=[[1], [2, 1]]
    )
    assert retrieval == pytest.approx(
        metrics.retrieval_scores([["d2", "d1"], ["d3"]], [{"d1": 1}, {"d3": 2, "d4": 1}])
    )
    assert metrics.load_metric("accuracy").compute(predictions=["a", "b"], references=["a", "c"]) == {"accuracy": 0.5}
    with pytest.raises(ValueError, match="Unknown metric module"):
        metrics.metric_path("bleu")


@pytest.mark.slow
def test_trainer_compute_metrics_reports_every_head(tiny_tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from mrl_text import MatryoshkaConfig, MatryoshkaForSequenceClassification
    from mrl_text.training.trainer import classification_compute_metrics

    torch.manual_seed(0)
    config = MatryoshkaConfig(
        encoder=tiny_bert_config(vocab_size=len(tiny_tokenizer)), matryoshka_dimensions=[32, 8], num_labels=2
    )
    model = MatryoshkaForSequenceClassification(config)
    texts = ["hello world", "thanks a lot", "the dog runs", "a cat is sleeping"] * 2
    data = Dataset.from_dict({"text": texts, "label": [0, 1, 0, 1] * 2}).map(
        lambda batch: tiny_tokenizer(batch["text"], padding="max_length", max_length=8), batched=True
    ).remove_columns("text")
    trainer = Trainer(
        model=model,
        args=TrainingArguments(str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True),
        eval_dataset=data,
        compute_metrics=classification_compute_metrics(config.matryoshka_dimensions),
    )
    scores = trainer.evaluate()
    for dim in (32, 8):
        logits = model.eval()(**{k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}, dim=dim).logits
        expected = (logits.argmax(-1) == torch.tensor(data["label"])).float().mean().item()
        assert scores[f"eval_classification_accuracy_{dim}"] == pytest.approx(expected)


def test_report_files_are_ordinary_files(tmp_path):
    import os
    import stat

    _results().to_json(tmp_path / "results.json")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind


# --- what each task measured: task type and primary metric ------------------------------------------------------


def _three_tasks():
    embedder = CountingEmbedder(dims=(16, 4))
    texts = [f"text {i}" for i in range(8)]
    return evaluate(embedder, [
        STSEvaluator(texts, texts[::-1], list(range(8)), name="stsb"),
        RetrievalEvaluator({f"d{i}": t for i, t in enumerate(texts)}, {"q": "text 3"}, {"q": {"d3": 1}}, name="sf"),
        ClassificationEvaluator(texts, [i % 2 for i in range(8)], texts, [i % 2 for i in range(8)], name="b77"),
    ])


def test_results_record_task_type_and_primary_metric_through_json(tmp_path):
    results = _three_tasks()
    expected = {"stsb": ("sentence-similarity", "spearman"), "sf": ("text-retrieval", "ndcg@10"),
                "b77": ("text-classification", "accuracy")}
    assert {t: (results.task_type(t), results.primary_metric(t)) for t in results.tasks} == expected
    results.to_json(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())["task_types"]["sf"] == "text-retrieval"
    loaded = Results.from_json(tmp_path / "results.json")
    assert {t: (loaded.task_type(t), loaded.primary_metric(t)) for t in loaded.tasks} == expected
    assert Results.concat([loaded, _results()]).task_type("b77") == "text-classification"
    with pytest.raises(KeyError, match="No task 'nope'"):
        loaded.task_type("nope")


def test_results_written_before_task_types_still_read(tmp_path):
    """Old files: {"rows", "primary_metrics"} or a bare list. A task type is filled in when one evaluator class fits;
    "accuracy" fits text classification and zero-shot image classification alike, so it stays unknown."""
    rows = _three_tasks().rows
    (tmp_path / "old.json").write_text(json.dumps({"rows": rows, "primary_metrics": {"stsb": "spearman"}}))
    old = Results.from_json(tmp_path / "old.json")
    assert (old.task_type("stsb"), old.primary_metric("stsb")) == ("sentence-similarity", "spearman")
    assert (old.task_type("sf"), old.primary_metric("sf")) == ("text-retrieval", "ndcg@10")
    assert old.primary_metric("b77") == "accuracy" and old.task_type("b77") is None
    (tmp_path / "list.json").write_text(json.dumps(rows))
    assert Results.from_json(tmp_path / "list.json").task_type("sf") == "text-retrieval"


def test_image_text_evaluators_declare_their_own_task_types():
    from mrl_text.evaluation.image_text import (
        DualEmbedder,
        ImageKNNEvaluator,
        ImageTextRetrievalEvaluator,
        ZeroShotClassificationEvaluator,
    )

    def encode_images(pixels):
        return torch.nn.functional.one_hot(pixels[:, 0, 0, 0].long() % 4, 4).float()

    def encode_texts(texts):
        return torch.nn.functional.one_hot(torch.tensor([len(t) % 4 for t in texts]), 4).float()

    dual = DualEmbedder(encode_texts, encode_images, 4, [4, 2], "dual")
    pixels = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    results = evaluate(dual, [
        ZeroShotClassificationEvaluator(pixels, [0, 1, 2, 3], ["a", "b", "c", "d"], templates=["{}"], name="zs"),
        ImageTextRetrievalEvaluator(pixels, ["w", "xx", "yyy", "zzzz"], name="itr"),
        ImageKNNEvaluator(pixels, [0, 1, 0, 1], pixels, [0, 1, 0, 1], k=1, name="knn"),
    ])
    assert {t: results.task_type(t) for t in results.tasks} == {
        "zs": "zero-shot-image-classification", "itr": "image-text-retrieval", "knn": "image-classification"
    }
    assert results.primary_metric("knn") == "knn_accuracy"


def _plain_and_sentence_transformer(tmp_path, st_max_seq_length):
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertModel

    torch.manual_seed(0)
    tokenizer = build_tokenizer(tmp_path / "plain")
    BertModel(tiny_bert_config(vocab_size=len(tokenizer)), add_pooling_layer=False).save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    transformer = models.Transformer(str(tmp_path / "plain"), max_seq_length=st_max_seq_length)
    SentenceTransformer(modules=[transformer, models.Pooling(32, "mean"), models.Normalize()]).save(
        str(tmp_path / "st")
    )
    return tmp_path / "plain", tmp_path / "st"


@pytest.mark.slow
def test_every_model_in_one_evaluation_reads_the_same_max_length(tmp_path):
    """A sentence-transformers model used to keep its own max_seq_length (here 8) while the Matryoshka route read
    up to its limit: the same weights then gave different embeddings for long texts."""
    plain_dir, st_dir = _plain_and_sentence_transformer(tmp_path, st_max_seq_length=8)
    long_texts = [" ".join(["the dog runs in the park with a happy child"] * 4), "hello world " * 10]
    for max_length in (None, 24):
        plain, st = (as_embedder(d, max_length=max_length) for d in (plain_dir, st_dir))
        assert plain.max_length == st.max_length == (max_length or 64)  # 64: the tiny encoder's position limit
        torch.testing.assert_close(st.encode(long_texts), plain.encode(long_texts), atol=1e-5, rtol=1e-4)
    with pytest.warns(UserWarning, match="reads at most 64 tokens"):
        assert as_embedder(plain_dir, max_length=512).max_length == 64
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"max_length={bad!r} must be a positive number of tokens"):
            as_embedder(plain_dir, max_length=bad)


def test_progress_bar_per_task(capsys):
    embedder = CountingEmbedder(dims=(16, 4))
    embedder.show_progress_bar, embedder.batch_size = True, 3
    texts = [f"text {i}" for i in range(8)]
    evaluate(embedder, [STSEvaluator(texts, texts[::-1], list(range(8)), name="stsb"),
                        STSEvaluator(texts, texts, list(range(8)), name="again")])
    err = capsys.readouterr().err
    assert "stsb (counting)" in err and "again (counting)" in err
    assert "5/5" in err  # 3 batches of the 8 distinct texts + 2 sizes
    assert [len(call) for call in embedder.calls[:3]] == [3, 3, 2]
