"""MilvusFunnelIndex against Milvus Lite (in process): the FunnelIndex contract, filters, upserts and deletes,
ingestion that survives a kill -9, and the errors. One Milvus Lite file per module (its start-up is the slow part)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason='needs pip install "mrl-text[milvus]"')
pytest.importorskip("milvus_lite", reason='needs pip install "mrl-text[milvus]"')

from mrl_text.deploy.funnel import FunnelIndex, exact_search  # noqa: E402
from mrl_text.deploy.milvus import MilvusFunnelIndex  # noqa: E402

STAGES = [(8, 60), (32, 10)]
N_DOCS = 400


def corpus(n=N_DOCS, dim=32, seed=0):
    """Clustered vectors whose first coordinates carry most of the variance, like Matryoshka embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim)).astype(np.float32)
    docs = centers[rng.integers(20, size=n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return docs * np.linspace(2.0, 0.5, dim, dtype=np.float32)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return str(tmp_path_factory.mktemp("milvus") / "funnel.db")


@pytest.fixture(scope="module")
def filled(db):
    """One collection shared by the read-only tests: ids 1000.., a `lang` field alternating de/en."""
    docs = corpus()
    index = MilvusFunnelIndex(db, "shared", stages=STAGES)
    ids = index.add(docs, ids=np.arange(N_DOCS) + 1000, fields={"lang": ["en" if i % 2 else "de" for i in
                                                                         range(N_DOCS)]})
    return index, docs, ids


def test_results_equal_the_faiss_funnel_and_recall_exact_search(filled):
    index, docs, ids = filled
    assert len(index) == N_DOCS and ids.tolist() == list(range(1000, 1000 + N_DOCS))
    queries = docs[:12] + 0.1 * np.random.default_rng(1).standard_normal((12, 32)).astype(np.float32)
    scores, found = index.search(queries, k=10)
    faiss_scores, faiss_ids = FunnelIndex(docs, stages=STAGES).search(queries, k=10)
    np.testing.assert_array_equal(found - 1000, faiss_ids)
    np.testing.assert_allclose(scores, faiss_scores, atol=1e-5)
    _, exact = exact_search(docs, queries, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip((found - 1000).tolist(), exact.tolist())])
    assert recall >= 0.9
    one_scores, one_ids = index.search(queries[0], k=5)  # one 1-D query: 1-D results
    assert one_ids.shape == (5,) and one_ids.tolist() == found[0, :5].tolist()


def test_filter_applies_to_the_first_stage(filled):
    index, docs, _ = filled
    _, found = index.search(docs[:4], k=10, filter="lang == 'en'")
    assert (found % 2 == 1).all()  # ids 1000 + odd positions are 'en'
    _, none = index.search(docs[:1], k=10, filter="lang == 'fr'")
    assert (none == -1).all()


def test_upsert_replaces_and_delete_removes(db):
    docs = corpus(50, seed=3)
    index = MilvusFunnelIndex(db, "upserts", stages=STAGES)
    index.add(docs, ids=np.arange(50))
    index.add(docs[::-1].copy(), ids=np.arange(50))  # the same ids again, other vectors: replaced, not added
    assert len(index) == 50
    _, found = index.search(docs[:1], k=1)
    assert found[0, 0] == 49
    index.delete([49, 48])
    assert len(index) == 48
    _, found = index.search(docs[:1], k=5)
    assert not {48, 49} & set(found[0].tolist())
    reopened = MilvusFunnelIndex(db, "upserts")  # settings come back from the collection
    assert reopened.stages == STAGES and reopened.full_dim == 32 and len(reopened) == 48


def test_a_memory_mapped_corpus_is_ingested_without_warnings(db, tmp_path):
    """Embeddings memory-mapped from a .npy file (read-only) go in without torch's "not writable" warning."""
    import warnings

    np.save(tmp_path / "docs.npy", corpus(40, seed=5).astype(np.float32))
    mapped = np.load(tmp_path / "docs.npy", mmap_mode="r")
    index = MilvusFunnelIndex(db, "mapped", stages=STAGES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index.add(mapped, ids=np.arange(40))
    assert not [w for w in caught if "not writable" in str(w.message)]
    assert len(index) == 40 and index.search(mapped[:1], k=1)[1][0, 0] == 0
    index.drop()


def test_from_model_resumes_without_encoding_twice(db, make_model, sentences, monkeypatch):
    model = make_model()
    encoded = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda texts, **kw: encoded.extend(texts) or encode(texts, **kw))
    MilvusFunnelIndex.from_model(model, sentences[:3], uri=db, collection="resume", stages=[(8, 5), (32, 3)])
    index = MilvusFunnelIndex.from_model(model, sentences, uri=db, collection="resume", stages=[(8, 5), (32, 3)],
                                         insert_batch_size=2)
    assert len(index) == len(sentences)
    assert encoded == sentences[:3] + sentences[3:]  # the first three were not encoded again
    with pytest.raises(ValueError, match=r"\[24\] are not sizes the model was trained with"):
        MilvusFunnelIndex.from_model(model, sentences, uri=db, collection="other", stages=[(24, 5), (32, 3)])


def test_errors_name_the_problem_and_the_fix(db, filled):
    index, docs, _ = filled
    with pytest.raises(ValueError, match="holds size 32"):
        index.add(np.ones((2, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="holds stage sizes"):
        MilvusFunnelIndex(db, "shared", stages=[(16, 60), (32, 10)])
    bad = docs[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"rows \[1\] hold NaN"):
        index.add(bad, ids=[1, 2, 3])
    bad[1, 2], bad[2, :8] = 0, 0
    with pytest.raises(ValueError, match=r"rows \[2\] are all zeros in the first 8"):
        index.add(bad, ids=[1, 2, 3])
    with pytest.raises(ValueError, match="ids hold duplicates"):
        index.add(docs[:2], ids=[5, 5])
    with pytest.raises(ValueError, match="Milvus Lite does not support binary vectors.*IVF_SQ8"):
        MilvusFunnelIndex(db, "binary", quantization="binary")
    with pytest.raises(ValueError, match="must end in .db"):
        MilvusFunnelIndex(db[:-3], "x")
    with pytest.raises(ConnectionError, match="cannot reach Milvus at http://127.0.0.1:1"):
        MilvusFunnelIndex("http://127.0.0.1:1", "x", timeout=2)
    with pytest.raises(ValueError, match="k=61 is larger than the 60 candidates"):
        index.search(docs[:1], k=61)


INGEST = textwrap.dedent("""
    import sys
    import numpy as np
    from mrl_text.deploy.milvus import MilvusFunnelIndex
    docs = np.load(sys.argv[2])
    index = MilvusFunnelIndex(sys.argv[1], "ingest", stages=[(8, 60), (32, 10)], insert_batch_size=25)
    for start in range(0, len(docs), 50):
        index.add(docs[start:start + 50], ids=np.arange(start, start + len(docs[start:start + 50])), flush=False)
        print(start + 50, flush=True)
        sys.stdin.readline()  # lock-step with the test: it cannot run ahead to the end while the test is descheduled
""")


def id_checksum(index):
    index.client.load_collection(index.collection)
    rows = index.client.query(index.collection, filter="id >= 0", output_fields=["id"])
    ids = sorted(int(row["id"]) for row in rows)
    return len(ids), hash(tuple(ids))


@pytest.mark.slow  # a child process that imports torch and Milvus Lite, then two ingestions of 1,200 documents
def test_a_kill_9_mid_ingestion_then_a_rerun_equals_an_uninterrupted_run(db, tmp_path):
    docs = corpus(1200, seed=5)
    np.save(tmp_path / "docs.npy", docs)
    killed_db = str(tmp_path / "killed.db")
    child = subprocess.Popen([sys.executable, "-c", INGEST, killed_db, str(tmp_path / "docs.npy")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    for line in child.stdout:  # kill it once a few batches are in, while it is upserting the next ones
        child.stdin.write("\n")
        child.stdin.flush()
        if int(line) >= 100:
            time.sleep(0.05)
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    rerun = MilvusFunnelIndex(killed_db, "ingest")
    assert 0 < len(rerun) < len(docs)  # it died part-way
    rerun.add(docs, ids=np.arange(len(docs)))
    uninterrupted = MilvusFunnelIndex(db, "uninterrupted", stages=[(8, 60), (32, 10)])
    uninterrupted.add(docs, ids=np.arange(len(docs)))
    assert id_checksum(rerun) == id_checksum(uninterrupted) == (len(docs), hash(tuple(range(len(docs)))))
    np.testing.assert_array_equal(rerun.search(docs[:5], k=10)[1], uninterrupted.search(docs[:5], k=10)[1])
