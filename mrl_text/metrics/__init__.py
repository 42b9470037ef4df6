"""Metric math shared by the evaluators, the `evaluate` modules shipped here, and Trainer `compute_metrics`.

Each function takes plain Python / numpy inputs and returns a fraction in [0, 1] (correlations in [-1, 1]).
The `evaluate` modules in the sub-folders (`correlation`, `retrieval`, `accuracy`) wrap these functions, so
`evaluate.load(metric_path("retrieval"))` gives the very numbers the evaluators report, offline.
"""

import math
from pathlib import Path

import numpy as np

from .linear_probe import fit_linear_probe

METRIC_MODULES = ("correlation", "retrieval", "accuracy")


def spearman(predictions, references):
    """Spearman rank correlation between predicted similarities and gold scores."""
    from scipy.stats import spearmanr

    return float(spearmanr(predictions, references).statistic)


def pearson(predictions, references):
    """Pearson correlation between predicted similarities and gold scores."""
    from scipy.stats import pearsonr

    return float(pearsonr(predictions, references).statistic)


def accuracy(predictions, references):
    """Fraction of predictions equal to the reference label."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references) or not references:
        raise ValueError(
            f"accuracy needs equally long, non-empty lists; got {len(predictions)} and {len(references)}."
        )
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def ndcg_at_k(ranking, relevance, k=10):
    """nDCG@k of one ranked list of ids against `{id: graded relevance}` (linear gain, as trec_eval)."""
    dcg = sum(relevance.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(rank + 2) for rank, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking, relevance, k=10):
    """Reciprocal rank of the first relevant id within the top k (0 when none)."""
    for rank, doc in enumerate(ranking[:k]):
        if relevance.get(doc, 0) > 0:
            return 1.0 / (rank + 1)
    return 0.0


def recall_at_k(ranking, relevance, k=100):
    """Share of the relevant ids found within the top k."""
    relevant = {doc for doc, r in relevance.items() if r > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


RETRIEVAL_METRICS = {"ndcg": ndcg_at_k, "mrr": mrr_at_k, "recall": recall_at_k}


def retrieval_scores(rankings, relevances, ks=None):
    """Mean retrieval metrics over queries.

    Args:
        rankings (`list[list[str]]`): per query, document ids best first.
        relevances (`list[dict[str, int]]`): per query, graded relevance of its judged documents.
        ks (`dict[str, int]`): metric name (`ndcg`, `mrr`, `recall`) -> cutoff; defaults to the BEIR trio
            nDCG@10, MRR@10, Recall@100.

    Returns:
        `{"ndcg@10": ..., "mrr@10": ..., "recall@100": ...}`, means over the queries with a relevant document.
    """
    ks = ks or {"ndcg": 10, "mrr": 10, "recall": 100}
    judged = [(r, rel) for r, rel in zip(rankings, relevances) if any(v > 0 for v in rel.values())]
    if not judged:
        raise ValueError("No query has a relevant document (relevance > 0); retrieval metrics are undefined.")
    return {
        f"{name}@{k}": float(np.mean([RETRIEVAL_METRICS[name](list(r), rel, k) for r, rel in judged]))
        for name, k in ks.items()
    }


def metric_path(name):
    """Folder of a shipped `evaluate` module, for `evaluate.load(metric_path("retrieval"))` (works offline)."""
    if name not in METRIC_MODULES:
        raise ValueError(f"Unknown metric module {name!r}; shipped modules: {', '.join(METRIC_MODULES)}.")
    return str(Path(__file__).parent / name)


def load_metric(name):
    """`evaluate.load` of a shipped metric module by path: no Hub access."""
    import evaluate

    return evaluate.load(metric_path(name))


__all__ = [
    "accuracy",
    "fit_linear_probe",
    "load_metric",
    "metric_path",
    "mrr_at_k",
    "ndcg_at_k",
    "pearson",
    "recall_at_k",
    "retrieval_scores",
    "spearman",
]
