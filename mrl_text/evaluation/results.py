"""`Results`: the tidy table every evaluation returns, with what each task measured, as JSON, markdown and a plot.

Rows are `{"model", "task", "metric", "dim", "value"}` (values are fractions). Per task the table also records the
evaluator's `task_type` (Hub model-index task type) and `primary_metric`, so a model card reads them from here.
"""

import json
from pathlib import Path

from ..file_utils import write_atomic
from .base import Evaluator

ROW_KEYS = ("model", "task", "metric", "dim", "value")


class Results:
    """A tidy table of evaluation rows `{"model", "task", "metric", "dim", "value"}` (values are fractions).

    Args:
        rows (`list[dict]`): the rows.
        primary_metrics (`dict[str, str]`, *optional*): task -> its headline metric (tables and plots show it first).
        task_types (`dict[str, str]`, *optional*): task -> Hub model-index task type (e.g. "sentence-similarity").
            Tasks without one get it from the evaluator class that reports their primary metric, when exactly one
            task type fits (results written before task types were recorded); otherwise [`task_type`] is None.
    """

    def __init__(self, rows=(), primary_metrics=None, task_types=None):
        self.rows = []
        for row in rows:
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise ValueError(f"Result row {row!r} lacks {missing}; rows need {list(ROW_KEYS)}.")
            self.rows.append({**row, "dim": int(row["dim"]), "value": float(row["value"])})
        self.primary_metrics = dict(primary_metrics or {})
        self.task_types = dict(task_types or {})
        for task in self.tasks:
            if task not in self.primary_metrics or task not in self.task_types:
                self._infer_task(task)

    @classmethod
    def from_evaluators(cls, rows, evaluators):
        """Rows with the task type and primary metric that each evaluator declares."""
        return cls(
            rows, {e.name: e.primary_metric for e in evaluators}, {e.name: e.task_type for e in evaluators}
        )

    def _infer_task(self, task):
        """Fill a task's missing primary metric / task type from the evaluator classes, when only one fits."""
        with_type = _evaluator_classes()
        found = set(self._unique(r["metric"] for r in self.rows if r["task"] == task))
        primary = self.primary_metrics.get(task)
        fits = [c for c in with_type if c.primary_metric == primary] if primary else [
            c for c in with_type if c.primary_metric in found
        ]
        if primary is None and len({c.primary_metric for c in fits}) == 1:
            self.primary_metrics[task] = fits[0].primary_metric
        if task not in self.task_types and len({c.task_type for c in fits}) == 1:
            self.task_types[task] = fits[0].task_type

    def task_type(self, task):
        """The Hub model-index task type of `task` (e.g. "sentence-similarity"), or None when unknown."""
        self._check_task(task)
        return self.task_types.get(task)

    def primary_metric(self, task):
        """The headline metric of `task` (e.g. "spearman"), or None when unknown."""
        self._check_task(task)
        return self.primary_metrics.get(task)

    def _check_task(self, task):
        if task not in self.tasks:
            raise KeyError(f"No task {task!r} in these results; tasks: {self.tasks}.")

    def __len__(self):
        return len(self.rows)

    def __repr__(self):
        return f"Results({len(self.rows)} rows, models={self.models}, tasks={self.tasks})"

    @staticmethod
    def _unique(values):
        return list(dict.fromkeys(values))

    @property
    def models(self):
        return self._unique(r["model"] for r in self.rows)

    @property
    def tasks(self):
        return self._unique(r["task"] for r in self.rows)

    def metrics(self, task):
        """The task's metrics, its primary metric first."""
        found = self._unique(r["metric"] for r in self.rows if r["task"] == task)
        primary = self.primary_metrics.get(task)
        return sorted(found, key=lambda m: m != primary)

    def dims(self, task=None):
        return sorted({r["dim"] for r in self.rows if task is None or r["task"] == task}, reverse=True)

    def value(self, task, metric, dim, model=None):
        """The one value of `task`/`metric` at size `dim` (of `model`, needed when several models are present)."""
        found = [
            r for r in self.rows
            if r["task"] == task and r["metric"] == metric and r["dim"] == dim and (model is None or r["model"] == model)
        ]
        if not found:
            raise KeyError(f"No result for task={task!r}, metric={metric!r}, dim={dim}, model={model!r}.")
        if len({r["model"] for r in found}) > 1:
            raise KeyError(f"Several models have task={task!r}, metric={metric!r}, dim={dim}: pass model= one of {self.models}.")
        return found[0]["value"]

    @classmethod
    def concat(cls, results):
        """One table from several `Results` (e.g. a model and its baselines)."""
        rows, primary, task_types = [], {}, {}
        for result in results:
            rows.extend(result.rows)
            primary.update(result.primary_metrics)
            task_types.update(result.task_types)
        return cls(rows, primary, task_types)

    def to_dict(self):
        return {"rows": self.rows, "primary_metrics": self.primary_metrics, "task_types": self.task_types}

    def to_json(self, path):
        """Write the rows as JSON (atomically: no half-written file on failure)."""
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such results file (write one with `mrl-text evaluate ... --out DIR`).")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from None
        if isinstance(data, list):
            return cls(data)
        if not isinstance(data, dict) or "rows" not in data:
            raise ValueError(f"{path}: expected {{'rows': [...]}} with rows {list(ROW_KEYS)}.")
        return cls(data["rows"], data.get("primary_metrics"), data.get("task_types"))

    def to_markdown(self):
        """One table per task and metric: a row per model, a column per size, values x100 with 2 decimals."""
        sections = []
        for task in self.tasks:
            for metric in self.metrics(task):
                dims = self.dims(task)
                lines = [
                    f"### {task}: {metric}",
                    "",
                    "| model | " + " | ".join(str(d) for d in dims) + " |",
                    "|---|" + "---:|" * len(dims),
                ]
                for model in self.models:
                    cells = {
                        r["dim"]: f"{100 * r['value']:.2f}"
                        for r in self.rows if r["task"] == task and r["metric"] == metric and r["model"] == model
                    }
                    if cells:
                        lines.append(f"| {model} | " + " | ".join(cells.get(d, "-") for d in dims) + " |")
                sections.append("\n".join(lines))
        return "\n\n".join(sections) + "\n"

    def plot(self, path=None, metrics=None):
        """Metric against size (log2 axis), one line per model, one panel per task; PNG bytes, written to `path`.

        Args:
            metrics (`dict[str, str]`, *optional*): task -> metric to show; defaults to each task's primary metric.
        """
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.rows:
            raise ValueError("No results to plot.")
        tasks = self.tasks
        figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
        for axis, task in zip(axes[0], tasks):
            metric = (metrics or {}).get(task) or self.metrics(task)[0]
            for model in self.models:
                points = sorted(
                    (r["dim"], 100 * r["value"])
                    for r in self.rows if r["task"] == task and r["metric"] == metric and r["model"] == model
                )
                if points:
                    axis.plot(*zip(*points), marker="o", label=model)
            axis.set_xscale("log", base=2)
            dims = self.dims(task)
            axis.set_xticks(dims, [str(d) for d in dims])
            axis.set_xlabel("embedding size")
            axis.set_ylabel(f"{metric} (x100)")
            axis.set_title(task)
            axis.grid(True, alpha=0.3)
        axes[0][-1].legend(fontsize="small")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        plt.close(figure)
        png = buffer.getvalue()
        if path is not None:
            write_atomic(path, png)
        return png



def _evaluator_classes():
    """Every evaluator class that declares a task type, the image-text ones included (imported on demand)."""
    try:
        from ..image_text import evaluation  # noqa: F401  (registers the image-text evaluators)
    except ImportError:  # pragma: no cover - shipped with the package
        pass
    return list(Evaluator.registry)


__all__ = ["ROW_KEYS", "Results"]
