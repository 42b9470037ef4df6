"""The evaluator contract: encode a task's texts once at full size, then score every size from the prefixes.

Each evaluator class declares what it measures, so reports and model cards need no table of metric names:
`task_type` (the Hub model-index task type, e.g. "sentence-similarity") and `primary_metric` (the headline metric).
"""

from .embedders import as_embedder


class Evaluator:
    """Base class: encode the task's texts once at full size, then score every size from the prefixes.

    Subclasses set the class attributes `task_type` (Hub model-index task type) and `primary_metric`, and
    implement `_embed(embedder)` (one encoding pass, returns what `_score` needs) and
    `_score(embedder, embedded, dim) -> {metric: value}`.
    """

    task_type = None
    primary_metric = None
    # Every concrete evaluator class, so results files written before task types were recorded can be read back.
    registry = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.task_type is not None and cls.primary_metric is not None:
            Evaluator.registry.append(cls)

    def __init__(self, name):
        if not name or not isinstance(name, str):
            raise ValueError(f"An evaluator needs a non-empty task name; got {name!r}.")
        self.name = name

    def evaluate(self, model, dims=None, **embedder_kwargs):
        """Rows `{"model", "task", "metric", "dim", "value"}` for every size of `dims` (default: the model's)."""
        return self.run(as_embedder(model, dims, **embedder_kwargs))

    def run(self, embedder):
        """Rows for every size of an [`Embedder`]'s `dims`, with a progress bar when it asks for one."""
        bar = None
        if embedder.show_progress_bar:
            from tqdm.auto import tqdm

            # One bar per task: its encoding batches, then one step per size scored.
            bar = tqdm(total=len(embedder.dims), desc=f"{self.name} ({embedder.name})", unit="step")
        try:
            with embedder.progress_to(bar):
                embedded = self._embed(embedder)
            rows = []
            for dim in embedder.dims:
                for metric, value in self._score(embedder, embedded, dim).items():
                    rows.append(
                        {"model": embedder.name, "task": self.name, "metric": metric, "dim": dim, "value": value}
                    )
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return rows

    def _embed(self, embedder):  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, embedder, embedded, dim):  # pragma: no cover - abstract
        raise NotImplementedError


def require_examples(name, **sequences):
    """A clear error naming the task and the argument when any of `sequences` is empty."""
    for what, values in sequences.items():
        if len(values) == 0:
            raise ValueError(f"{name}: {what} is empty; an evaluation needs examples.")


__all__ = ["Evaluator", "require_examples"]
