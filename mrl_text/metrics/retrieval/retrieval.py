"""nDCG@k, MRR@k and Recall@k of ranked document ids against relevance judgements (the BEIR metrics).

Each example is one query: `predictions` its ranked document ids (best first), `references` the ids of its judged
documents, and the optional `relevance` keyword their graded relevance (default 1 each).

    >>> from mrl_text.metrics import load_metric
    >>> load_metric("retrieval").compute(predictions=[["d2", "d1"]], references=[["d1"]])
    {'ndcg@10': 0.63..., 'mrr@10': 0.5, 'recall@100': 1.0}
"""

import datasets
import evaluate

from mrl_text.metrics import retrieval_scores


class Retrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean nDCG@k (linear gain, as trec_eval), MRR@k and Recall@k over queries.",
            citation="Thakur et al., BEIR: A Heterogeneous Benchmark for Zero-shot Evaluation of IR Models, 2021.",
            inputs_description=(
                "predictions: ranked document ids per query; references: judged document ids per query; "
                "relevance (optional kwarg): graded relevance per judged id; ndcg_k, mrr_k, recall_k: cutoffs."
            ),
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, relevance=None, ndcg_k=10, mrr_k=10, recall_k=100):
        relevance = relevance or [[1] * len(ids) for ids in references]
        judgements = [dict(zip(ids, grades)) for ids, grades in zip(references, relevance)]
        return retrieval_scores(predictions, judgements, {"ndcg": ndcg_k, "mrr": mrr_k, "recall": recall_k})
