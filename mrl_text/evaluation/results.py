"""`Results`: the tidy table every evaluation returns, with what each task measured, as JSON, markdown and a plot.

Rows are `{"model", "task", "metric", "dim", "value"}` (values are fractions), plus the `max_length` (tokens) the
texts were read at when known (`evaluate` records it; it survives JSON and `concat`). Per task the table also
records the evaluator's `task_type` (Hub model-index task type) and `primary_metric`, so a model card reads them
from here.
A grid evaluation (`mrl_text.evaluation.grid`) adds `grid`: the same rows with `layers` (None: all) and `precision`
(and `seconds_per_text`, the encode time of that layer count), for every cell; `rows` keep the full-depth float32
cells, so everything that reads `rows` is unchanged.
"""

import json
from pathlib import Path

from ..file_utils import write_atomic
from ..models.quantization import bytes_per_vector
from .base import Evaluator

ROW_KEYS = ("model", "task", "metric", "dim", "value")
GRID_KEYS = ("layers", "precision")  # a grid cell's other coordinates; absent means all layers, float32
CELL_MEASURES = ("seconds_per_text",)  # what a grid cell records besides its value (not copied to `rows`)
COSTS = ("bytes", "seconds_per_text")  # what a budget limits: bytes per vector, encode time per text


class Results:
    """A tidy table of evaluation rows `{"model", "task", "metric", "dim", "value"}` (values are fractions).

    Args:
        rows (`list[dict]`): the rows.
        primary_metrics (`dict[str, str]`, *optional*): task -> its headline metric (tables and plots show it first).
        task_types (`dict[str, str]`, *optional*): task -> Hub model-index task type (e.g. "sentence-similarity").
            Tasks without one get it from the evaluator class that reports their primary metric, when exactly one
            task type fits (results written before task types were recorded); otherwise [`task_type`] is None.
    """

    def __init__(self, rows=(), primary_metrics=None, task_types=None, grid=()):
        self.rows, self.grid = [], []
        for row in [*rows, *({**cell, "in_grid": True} for cell in grid)]:
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise ValueError(f"Result row {row!r} lacks {missing}; rows need {list(ROW_KEYS)}.")
            row = {**row, "dim": int(row["dim"]), "value": float(row["value"])}
            if not any(key in row for key in (*GRID_KEYS, "in_grid")):
                self.rows.append(row)
                continue
            layers = row.pop("layers", None)
            precision = row.pop("precision", "float32")
            cell = {**row, "layers": None if layers is None else int(layers), "precision": precision}
            if not cell.pop("in_grid", False) and cell["layers"] is None and cell["precision"] == "float32":
                self.rows.append({k: v for k, v in cell.items() if k not in GRID_KEYS + CELL_MEASURES})
            self.grid.append(cell)
        self.primary_metrics = dict(primary_metrics or {})
        self.task_types = dict(task_types or {})
        for task in self.tasks:
            if task not in self.primary_metrics or task not in self.task_types:
                self._infer_task(task)

    @classmethod
    def from_evaluators(cls, rows, evaluators):
        """Rows with the task type and primary metric that each evaluator declares (grid cells: rows with `layers` /
        `precision` go to `grid`, the full-depth float32 ones to `rows` as well)."""
        return cls(
            rows, {e.name: e.primary_metric for e in evaluators}, {e.name: e.task_type for e in evaluators}
        )

    def _infer_task(self, task):
        """Fill a task's missing primary metric / task type from the evaluator classes, when only one fits."""
        with_type = _evaluator_classes()
        found = {r["metric"] for r in self.rows + self.grid if r["task"] == task}
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
        return self._unique(r["model"] for r in self.rows + self.grid)

    @property
    def tasks(self):
        return self._unique(r["task"] for r in self.rows + self.grid)

    def metrics(self, task):
        """The task's metrics, its primary metric first."""
        found = self._unique(r["metric"] for r in self.rows + self.grid if r["task"] == task)
        primary = self.primary_metrics.get(task)
        return sorted(found, key=lambda m: m != primary)

    def dims(self, task=None):
        return sorted({r["dim"] for r in self.rows if task is None or r["task"] == task}, reverse=True)

    def value(self, task, metric, dim, model=None):
        """The one value of `task`/`metric` at size `dim` (of `model`, needed when several models are present)."""
        found = [
            r
            for r in self.rows
            if r["task"] == task
            and r["metric"] == metric
            and r["dim"] == dim
            and (model is None or r["model"] == model)
        ]
        if not found:
            raise KeyError(f"No result for task={task!r}, metric={metric!r}, dim={dim}, model={model!r}.")
        if len({r["model"] for r in found}) > 1:
            raise KeyError(
                f"Several models have task={task!r}, metric={metric!r}, dim={dim}: pass model= one of {self.models}."
            )
        return found[0]["value"]

    @classmethod
    def concat(cls, results):
        """One table from several `Results` (e.g. a model and its baselines)."""
        rows, primary, task_types, grid = [], {}, {}, []
        for result in results:
            rows.extend(result.rows)
            grid.extend(result.grid)
            primary.update(result.primary_metrics)
            task_types.update(result.task_types)
        return cls(rows, primary, task_types, grid)

    def to_dict(self):
        grid = {"grid": self.grid} if self.grid else {}
        return {"rows": self.rows, "primary_metrics": self.primary_metrics, "task_types": self.task_types, **grid}

    def to_json(self, path):
        """Write the rows as JSON (atomically: no half-written file on failure)."""
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such results file (write one with `mrl-text evaluate ... --out DIR`)."
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from None
        if isinstance(data, list):
            return cls(data)
        if not isinstance(data, dict) or "rows" not in data:
            raise ValueError(f"{path}: expected {{'rows': [...]}} with rows {list(ROW_KEYS)}.")
        return cls(data["rows"], data.get("primary_metrics"), data.get("task_types"), data.get("grid") or ())

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
        if self.grid:
            sections.append(self.grid_markdown().rstrip("\n"))
        return "\n\n".join(sections) + "\n"

    # --- the (layers, dims, precision) grid --------------------------------------------------------------------------

    def cells(self, task, metric=None, model=None):
        """The grid cells of `task` / `metric` (default: its primary metric) for `model` (needed when several are
        present): dicts with `layers`, `dim`, `precision`, `bytes` (per vector), `seconds_per_text` (encode time; None
        when not measured) and `value`. Results without a grid give their rows as full-depth float32 cells."""
        self._check_task(task)
        metric = metric or self.metrics(task)[0]
        source = self.grid or [{**r, "layers": None, "precision": "float32"} for r in self.rows]
        found = [c for c in source if c["task"] == task and c["metric"] == metric and model in (None, c["model"])]
        if len({c["model"] for c in found}) > 1:
            raise KeyError(f"Several models have grid cells for {task!r}: pass model= one of {self.models}.")
        # `binary+rescore` keeps binary codes in memory (the float vectors of the re-ranked few are read from disk)
        return [{"layers": c["layers"], "dim": c["dim"], "precision": c["precision"], "value": c["value"],
                 "bytes": bytes_per_vector(c["dim"], c["precision"].split("+")[0]),
                 "seconds_per_text": c.get("seconds_per_text")} for c in found]

    def pareto_front(self, task, metric=None, model=None, cost="bytes"):
        """The best cell per budget: cells no other cell beats at the same or lower `cost`, cheapest first.

        `cost`: `"bytes"` (per vector) or `"seconds_per_text"` (encode time: fewer layers; cells without a measured
        time are left out)."""
        if cost not in COSTS:
            raise ValueError(f"cost={cost!r}; choose one of {', '.join(COSTS)}.")
        front = []
        cells = [c for c in self.cells(task, metric, model) if c[cost] is not None]
        for cell in sorted(cells, key=lambda c: (c[cost], -c["value"])):
            if not front or cell["value"] > front[-1]["value"]:
                front.append(cell)
        return front

    @staticmethod
    def cell_name(cell):
        layers = "" if cell["layers"] is None else f", {cell['layers']} layers"
        return f"{cell['dim']} x {cell['precision']}{layers}"

    def grid_markdown(self):
        """Per task (primary metric, x100): a row per (model, layers, precision) with its encode time when measured,
        a column per size, and the best cell per budget (the Pareto front) of bytes per vector and of encode time."""
        sections = []
        for task in dict.fromkeys(c["task"] for c in self.grid):
            metric = self.metrics(task)[0]
            dims = sorted({c["dim"] for c in self.grid if c["task"] == task}, reverse=True)
            timed = any(c.get("seconds_per_text") is not None for c in self.grid if c["task"] == task)
            lines = [f"### {task}: {metric} by size x precision x layers", "",
                     "| model | layers | precision | " + ("ms / text | " if timed else "")
                     + " | ".join(map(str, dims)) + " |",
                     "|---|---:|---|" + ("---:|" if timed else "") + "---:|" * len(dims)]
            for model in self.models:
                cells = self.cells(task, metric, model) if any(
                    c["model"] == model and c["task"] == task for c in self.grid) else []
                for layers, precision in dict.fromkeys((c["layers"], c["precision"]) for c in cells):
                    series = [c for c in cells if (c["layers"], c["precision"]) == (layers, precision)]
                    values = {c["dim"]: f"{100 * c['value']:.2f}" for c in series}
                    time = f"{milliseconds(series[0]['seconds_per_text'])} | " if timed else ""
                    lines.append(f"| {model} | {'all' if layers is None else layers} | {precision} | {time}"
                                 + " | ".join(values.get(d, "-") for d in dims) + " |")
                if cells:
                    front = ", ".join(f"{c['bytes']} B: {self.cell_name(c)} {100 * c['value']:.2f}"
                                      for c in self.pareto_front(task, metric, model))
                    lines += ["", f"Best per budget ({model}): {front}", ""]
                    fastest = self.pareto_front(task, metric, model, cost="seconds_per_text")
                    if len({c["layers"] for c in cells}) > 1 and fastest:
                        front = ", ".join(f"{milliseconds(c['seconds_per_text'])} ms: {self.cell_name(c)} "
                                          f"{100 * c['value']:.2f}" for c in fastest)
                        lines += [f"Best per encode-time budget ({model}): {front}", ""]
            sections.append("\n".join(lines).rstrip("\n"))
        return "\n\n".join(sections) + "\n"

    def plot_budget(self, path=None, model=None):
        """Quality (primary metric, x100) against bytes per vector (log2 axis), one panel per task: a line per
        (layers, precision) through its sizes, and the best cell per budget (the Pareto front) marked. When the grid
        holds encode times of several layer counts, a second row plots quality against encode time per text. PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tasks = list(dict.fromkeys(c["task"] for c in self.grid)) or self.tasks
        if not tasks:
            raise ValueError("No results to plot.")
        model = model or (self.grid[0]["model"] if self.grid else self.models[0])
        timed = len({c["layers"] for task in tasks for c in self.cells(task, model=model)
                     if c["seconds_per_text"] is not None}) > 1
        figure, axes = plt.subplots(2 if timed else 1, len(tasks), figsize=(5 * len(tasks), 3.8 * (1 + timed)),
                                    squeeze=False)
        series = list(dict.fromkeys((c["layers"], c["precision"])
                                    for task in tasks for c in self.cells(task, model=model)))
        for column, task in enumerate(tasks):
            cells = self.cells(task, model=model)
            for row, cost in enumerate(COSTS[: 1 + timed]):
                axis = axes[row][column]
                for layers, precision in dict.fromkeys((c["layers"], c["precision"]) for c in cells):
                    points = sorted((c[cost], 100 * c["value"]) for c in cells
                                    if (c["layers"], c["precision"]) == (layers, precision) and c[cost] is not None)
                    label = precision + ("" if layers is None else f", {layers} layers")
                    color = f"C{series.index((layers, precision)) % 10}"  # one colour per series in every panel
                    if cost == "bytes":  # a line through the sizes
                        axis.plot(*zip(*points), marker="o", markersize=3, label=label, alpha=0.8, color=color)
                    elif points:  # a layer count's cells share one encode time: a column of points
                        axis.scatter([1000 * x for x, _ in points], [y for _, y in points], s=12, label=label,
                                     alpha=0.8, color=color)
                front = self.pareto_front(task, model=model, cost=cost)
                scale = 1 if cost == "bytes" else 1000
                xs, ys = [scale * c[cost] for c in front], [100 * c["value"] for c in front]
                axis.step(xs, ys, where="post", color="black", linewidth=1, label="best per budget")
                axis.scatter(xs, ys, s=60, facecolors="none", edgecolors="black", zorder=3)
                if cost == "bytes":
                    axis.set_xscale("log", base=2)
                else:  # from zero, so the distance between layer counts reads as their speed ratio
                    axis.set_xlim(left=0, right=1.05 * max(1000 * c[cost] for c in cells if c[cost] is not None))
                axis.set_xlabel("bytes per vector" if cost == "bytes" else "encode time per text (ms)")
                axis.set_ylabel(f"{self.metrics(task)[0]} (x100)")
                axis.set_title(f"{task} ({model})", fontsize="small")
                axis.grid(True, alpha=0.3)
        axes[0][-1].legend(fontsize="x-small")
        return _png(figure, path)

    def plot(self, path=None, metrics=None):
        """Metric against size (log2 axis), one line per model, one panel per task; PNG bytes, written to `path`.

        Args:
            metrics (`dict[str, str]`, *optional*): task -> metric to show; defaults to each task's primary metric.
        """
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
        return _png(figure, path)



def milliseconds(seconds):
    """Encode time per text for tables: milliseconds, 3 significant digits ("-" when not measured)."""
    return "-" if seconds is None else f"{1000 * seconds:.3g}"


def _png(figure, path):
    """The figure as PNG bytes (closed afterwards), written atomically to `path` when given."""
    import io

    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    png = buffer.getvalue()
    if path is not None:
        write_atomic(path, png)
    return png


def _evaluator_classes():
    """Every evaluator class that declares a task type (each registers itself when its module is imported; the
    `mrl_text.evaluation` package imports the text and the image-text ones)."""
    return list(Evaluator.registry)


__all__ = ["GRID_KEYS", "ROW_KEYS", "Results"]
