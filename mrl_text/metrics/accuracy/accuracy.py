"""Accuracy of predicted labels (the classification-probe metric). Labels are strings, so names and ids both work.

    >>> from mrl_text.metrics import load_metric
    >>> load_metric("accuracy").compute(predictions=["a", "b"], references=["a", "c"])
    {'accuracy': 0.5}
"""

import datasets
import evaluate

from mrl_text.metrics import accuracy


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to the reference label.",
            citation="",
            inputs_description="predictions: predicted label per example; references: gold label (as strings).",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return {"accuracy": accuracy(predictions, references)}
