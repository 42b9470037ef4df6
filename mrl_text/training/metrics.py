"""Trainer glue for metrics: evaluator results as `Trainer` log keys, and `compute_metrics` for nested heads.

Both work with `MatryoshkaTrainer` and a plain `transformers.Trainer`; import them from `mrl_text.training.trainer`.
"""

from .. import metrics
from ..evaluation import Results


def metrics_for_trainer(results, prefix="eval"):
    """Flat `{f"{prefix}_{task}_{metric}_{dim}": value}` for `Trainer` logs, e.g. `eval_stsb_spearman_64`.

    Metric names are made log-safe: `ndcg@10` becomes `ndcg_at_10` (`eval_scifact_ndcg_at_10_64`).
    """
    rows = results.rows if isinstance(results, Results) else list(results)
    if len({r["model"] for r in rows}) > 1:
        raise ValueError("metrics_for_trainer takes the results of one model; filter the rows first.")
    start = f"{prefix}_" if prefix else ""
    return {f"{start}{r['task']}_{r['metric'].replace('@', '_at_')}_{r['dim']}": r["value"] for r in rows}


def classification_compute_metrics(dims, task="classification"):
    """`compute_metrics` for a `MatryoshkaTrainer` (or `Trainer`) of `MatryoshkaForSequenceClassification`: accuracy of
    every size's head.

    The trainer passes `(logits, matryoshka_logits, embeddings)` as predictions; `matryoshka_logits` holds one
    `(n, num_labels)` array per size in `dims` order (the model's `config.matryoshka_dimensions`). Keys follow
    [`metrics_for_trainer`]: `{task}_accuracy_{dim}` (the trainer adds `eval_`).

    Example:

    ```python
    >>> compute_metrics = classification_compute_metrics(classifier.config.matryoshka_dimensions)
    >>> trainer = MatryoshkaTrainer(model=classifier, args=args, train_dataset=train, eval_dataset=test,
    ...                             compute_metrics=compute_metrics)
    >>> trainer.evaluate()["eval_classification_accuracy_64"]
    ```
    """
    dims = list(dims)

    def compute_metrics(eval_prediction):
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        per_size = predictions[1] if isinstance(predictions, (tuple, list)) and len(predictions) > 1 else None
        if not isinstance(per_size, (tuple, list)) or len(per_size) != len(dims):
            raise ValueError(
                f"Expected per-size logits for sizes {dims} as the second prediction (matryoshka_logits); check that "
                "the model is a MatryoshkaForSequenceClassification and `dims` is its config.matryoshka_dimensions."
            )
        references = labels.reshape(-1).tolist()
        return {
            f"{task}_accuracy_{dim}": metrics.accuracy(logits.argmax(-1).reshape(-1).tolist(), references)
            for dim, logits in zip(dims, per_size)
        }

    return compute_metrics


__all__ = ["classification_compute_metrics", "metrics_for_trainer"]
