"""Spearman and Pearson correlation of predicted similarities with gold scores (the STS metric).

Shipped inside mrl-text and loaded by path, so it works offline:

    >>> from mrl_text.metrics import load_metric
    >>> load_metric("correlation").compute(predictions=[0.1, 0.5, 0.9], references=[1, 2, 3])
    {'spearman': 1.0, 'pearson': 0.99...}
"""

import datasets
import evaluate

from mrl_text.metrics import pearson, spearman


class Correlation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Spearman (rank) and Pearson correlation between predicted similarities and gold scores.",
            citation="Cer et al., SemEval-2017 Task 1: Semantic Textual Similarity (STS Benchmark).",
            inputs_description="predictions: similarity per pair (float); references: gold score per pair (float).",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"spearman": spearman(predictions, references), "pearson": pearson(predictions, references)}
