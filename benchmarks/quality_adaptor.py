"""placeholder: data part (rewritten below)"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import embedding_cache  # noqa: E402
from mrl_text import data  # noqa: E402

MAX_LENGTH = 256


def load_tasks(data_dir=None):
    root = Path(data_dir) if data_dir else data.shared_data_dir()
    corpus, queries, qrels = data.load_beir(root / "scifact", split="test")
    _, train_queries, train_qrels = data.load_beir(root / "scifact", split="train")
    sts_train = data.load_sts(root / "stsb" / "train.tsv")
    sts_test = data.load_sts(root / "stsb" / "test.tsv")
    bank_train = data.load_classification(root / "banking77" / "train.tsv")
    bank_test = data.load_classification(root / "banking77" / "test.tsv")
    return dict(corpus=corpus, queries=queries, qrels=qrels, train_queries=train_queries, train_qrels=train_qrels,
                sts_train=sts_train, sts_test=sts_test, bank_train=bank_train, bank_test=bank_test)


if __name__ == "__main__":
    t = load_tasks()
    texts = (list(t["corpus"].values()) + list(t["queries"].values()) + list(t["train_queries"].values())
             + t["sts_train"][0] + t["sts_train"][1] + t["sts_test"][0] + t["sts_test"][1]
             + t["bank_train"][0] + t["bank_test"][0])
    model = embedding_cache.load_model()
    embedding_cache.cached_embeddings(model, texts, "all-MiniLM-L6-v2", max_length=MAX_LENGTH, batch_size=32)
