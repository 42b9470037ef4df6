"""`evaluate`: run evaluators on one model, encoding each task's texts once, into one [`Results`] table."""

from .base import Evaluator
from .embedders import as_embedder
from .results import Results


def evaluate(model, evaluators, dims=None, **embedder_kwargs):
    """Run `evaluators` on one model (encoding it once per evaluator) and return [`Results`].

    Args:
        model: anything [`as_embedder`] takes.
        evaluators (`list[Evaluator]`): with distinct names.
        dims (`list[int]`, *optional*): sizes to score; defaults to the model's `matryoshka_dimensions`.
        embedder_kwargs: `batch_size`, `max_length` (one value for every model you compare; default: a Matryoshka
            model's saved `max_seq_length` when it has one, else 256 tokens), `device`, `show_progress_bar` (a bar
            per task).

    Every row records the `max_length` it was computed at (a card refuses to compare rows of different lengths).
    """
    if isinstance(evaluators, Evaluator):
        evaluators = [evaluators]
    evaluators = list(evaluators)
    if not evaluators:
        raise ValueError("No evaluators given; pass e.g. [STSEvaluator(...)].")
    names = [e.name for e in evaluators]
    if len(set(names)) != len(names):
        raise ValueError(f"Evaluator names must be distinct (they name the result rows); got {names}.")
    embedder = as_embedder(model, dims, **embedder_kwargs)
    rows = [with_length(row, embedder) for evaluator in evaluators for row in evaluator.evaluate(embedder)]
    return Results.from_evaluators(rows, evaluators)


def with_length(row, embedder):
    """`row` with the `max_length` its embeddings were computed at (as it was when the embedder does not know it)."""
    return row if embedder.max_length is None else {**row, "max_length": embedder.max_length}


__all__ = ["evaluate", "with_length"]
