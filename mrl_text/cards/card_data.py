"""What a Matryoshka model's card says, as data: `MatryoshkaModelCardData` on `model.model_card_data`, filled during
training by `MatryoshkaModelCardCallback` (registered by `MatryoshkaTrainer`) and written by `save_pretrained`.

The callback records the loss (its config and citation), the non-default training arguments and size schedule, the
datasets (names and row counts), every evaluator's results at every size (an evaluation before training, e.g.
`trainer.evaluate()` before `trainer.train()`, is kept as the "before training" curve), the library versions, the
training time and the hardware. A model trained with quantization in the loop (`QuantizationAwareLoss`) also gets,
at every evaluation after training started, the size x precision grid of the trained precisions
(`mrl_text.evaluation.evaluate_grid`, int8 with the ranges trained so far): the card's precision axis.
It also saves the evaluation settings with the model (`config.max_seq_length`), so that loading the saved folder and
running the same evaluator gives the card's numbers.

```python
>>> trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=pairs, evaluators=[sts])
>>> trainer.evaluate(); trainer.train(); trainer.evaluate()
>>> model.model_card_data.results            # before and after, every size
>>> trainer.save_model("out/")               # README.md, matryoshka_results.png, model_card_data.json
```
"""

import json
import os
import platform
import re
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from transformers import TrainerCallback

from ..evaluation import Results
from ..file_utils import write_atomic
from ..models.configuration_matryoshka import portable_name

CARD_DATA_FILENAME = "model_card_data.json"
BEFORE_TRAINING = "before training"
# Training arguments that are paths, secrets or bookkeeping: never part of a card.
PRIVATE_ARGUMENTS = {
    "output_dir",
    "logging_dir",
    "run_name",
    "hub_token",
    "push_to_hub_token",
    "hub_model_id",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "deepspeed",
    "fsdp_config",
    "accelerator_config",
    "report_to",
}
# Folder names that say nothing about a model: a display name adds the folder above them.
GENERIC_FOLDER_NAMES = {"model", "models", "snapshot", "final", "checkpoints", "output", "outputs"}
LIBRARIES = ("mrl_text", "transformers", "torch", "sentence_transformers", "datasets", "accelerate", "tokenizers")


def is_local_path(name):
    return bool(name) and (Path(str(name)).exists() or str(name).startswith(("/", ".", "~")) or "\\" in str(name))


def display_name(name):
    """A model's name for tables, legends and cards: a hub id as is, a local folder by its name (never its path)."""
    name = str(name)
    if not is_local_path(name):
        return name
    path = Path(name).expanduser().resolve()
    if path.name.lower() in GENERIC_FOLDER_NAMES or path.name.startswith("checkpoint-"):
        return f"{path.parent.name}/{path.name}"
    return path.name


def starting_point(model):
    """What a model was loaded or built from: its own folder / Hub id, else its encoder's (None when unknown)."""
    config = getattr(model, "config", model)
    encoder = getattr(config, "encoder", config)
    own = getattr(model, "name_or_path", None) if config is not model else None  # a config's is its own folder
    return own or getattr(encoder, "_name_or_path", None) or None


def looks_like_hub_id(name):
    """`org/name` and not a folder here. A bare name may be a folder's name (configs name local folders so), so it
    is not taken for an id; a caller who knows better sets `base_model` itself."""
    return bool(name) and not is_local_path(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", str(name)) is not None


def base_model_id(model):
    """The Hub id of the model this one was built on, when its config knows one (a local folder is not an id)."""
    name = starting_point(model)
    return name if looks_like_hub_id(name) else None


def library_versions():
    """Python and the installed versions of the libraries a card lists."""
    from importlib import import_module

    versions = {"python": platform.python_version()}
    for library in LIBRARIES:
        try:
            versions[library.replace("_", "-")] = import_module(library).__version__
        except (ImportError, AttributeError):
            continue
    return versions


def hardware():
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{count} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def non_default_arguments(args):
    """The training arguments that differ from their defaults (what a reader needs to reproduce the run)."""
    # Compared with the declared defaults (building a second TrainingArguments would reset accelerate's state);
    # an unset option that __post_init__ filled in (None -> False, "" -> []) is still a default.
    defaults = {}
    for f in fields(args):
        default = f.default if f.default_factory is MISSING else f.default_factory()
        defaults[f.name] = getattr(default, "value", default)
    ignored = set(PRIVATE_ARGUMENTS)
    if getattr(getattr(args, "device", None), "type", None) == "cpu":
        ignored.add("dataloader_pin_memory")  # switched off by MatryoshkaTrainingArguments on CPU, not chosen
    chosen = {
        name: value
        for name, value in (args.to_dict() if hasattr(args, "to_dict") else asdict(args)).items()
        if name in defaults and name not in ignored and not name.startswith("_") and value != defaults[name]
        and not (defaults[name] in (None, "") and not value)
    }
    # a local path (a model or data folder) is named, never written out: cards travel to other machines
    return {name: display_name(v) if isinstance(v, str) and is_local_path(v) else v for name, v in chosen.items()}


def training_hyperparameters(args, size_schedule=None):
    """A card's hyperparameters: the non-default training arguments and, when training had a size schedule, its
    non-zero fractions (how much the smaller sizes weighed over the run is part of how the model was trained)."""
    schedule = size_schedule.get_config_dict() if size_schedule is not None else {}
    return non_default_arguments(args) | {name: value for name, value in schedule.items() if value}


def describe_dataset(dataset):
    """`{"name", "rows", "columns"}` of a `datasets.Dataset` (name from its Hub id or source files when known)."""
    description = {}
    info = getattr(dataset, "info", None)
    name = getattr(info, "dataset_name", None)
    if name and name not in ("csv", "json", "parquet", "text", "generator"):
        description["name"] = name
    else:
        files = [Path(f["filename"]) for f in getattr(dataset, "cache_files", None) or []]
        hub = next(
            (p.parts[i] for p in files for i, part in enumerate(p.parts) if part.startswith("datasets--")), None
        )
        if hub:
            description["name"] = hub.removeprefix("datasets--").replace("--", "/")
    if hasattr(dataset, "__len__"):
        description["rows"] = len(dataset)
    if getattr(dataset, "column_names", None):
        description["columns"] = list(dataset.column_names)
    return description


def trained_precisions(loss_description):
    """The precisions a model was trained for, from its card's loss description (`describe_loss`): the
    `precisions` of a `QuantizationAwareLoss` config at any depth of the nested loss configs; [] without one."""
    config = (loss_description or {}).get("config")
    while isinstance(config, dict):
        if config.get("precisions"):
            return list(config["precisions"])
        config = config.get("loss_config")
    return []


def describe_loss(loss, fallback_name=None):
    """`{"name", "config", "citation"}` of a loss (`get_config_dict()` and `citation` where the loss offers them)."""
    if loss is None:
        return {"name": fallback_name} if fallback_name else None
    base = getattr(loss, "base_loss", None)
    name = type(loss).__name__ + (f"({type(base).__name__})" if base is not None else "")
    description = {"name": name}
    get_config = getattr(loss, "get_config_dict", None)
    if callable(get_config):
        description["config"] = get_config()
    if getattr(loss, "citation", None):
        description["citation"] = loss.citation
    return description


@dataclass
class MatryoshkaModelCardData:
    r"""Everything a Matryoshka model's card says, as data (the model card is rendered from it).

    Training with `MatryoshkaTrainer` fills it (`MatryoshkaModelCardCallback`); set fields yourself for what only you
    know, e.g. `model.model_card_data.base_model = "sentence-transformers/all-MiniLM-L6-v2"`.

    Args:
        model_name (`str`): the name of this model; rows of `results` under it are its own results (the model-index
            carries only those). Other models' rows (the model before training, baselines) are comparisons.
        model_id (`str`): the Hub id used in the card's usage snippets.
        base_model (`str`): Hub id of the starting model (metadata and link); `base_model_name` names a local one.
        train_datasets (`list[dict]`): `{"name", "id" (Hub id, optional), "rows", "columns"}` per training dataset.
        eval_datasets (`dict[str, dict]`): task -> `{"name", "id"}`: how the model-index names an evaluated dataset.
        task_types (`dict[str, str]`): task -> Hub task id (from the evaluators).
        loss (`dict`): `{"name", "config", "citation"}`.
        hyperparameters (`dict`): the non-default training arguments.
        evaluation (`dict`): the settings the results were computed with (e.g. `max_seq_length`).
        results ([`Results`]): evaluation rows at every size.
        versions, training, details (`dict`): library versions; steps/epochs/time/hardware; any other card lines.
    """

    model_name: str | None = None
    model_id: str | None = None
    base_model: str | None = None
    base_model_name: str | None = None
    language: str | None = "en"
    license: str | None = "apache-2.0"
    train_datasets: list = field(default_factory=list)
    eval_datasets: dict = field(default_factory=dict)
    task_types: dict = field(default_factory=dict)
    loss: dict | None = None
    hyperparameters: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    results: Results | None = None
    versions: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def before_name(self):
        """The model name under which results before training are kept."""
        return f"{self.base_model_name or display_name(self.base_model or 'base model')} ({BEFORE_TRAINING})"

    def add_results(self, results, model=None, before_training=False):
        """Record `results` as this model's own (or, with `before_training`, as the model before training).

        Args:
            results ([`Results`]): rows; with several models, `model` names the one that is this model and the other
                models' rows are kept as comparisons under their display names.
            model (`str`, *optional*): the name of this model's rows in `results`; needed when it holds several models.
        """
        if not results.rows:
            return self
        if model is None:
            if len(results.models) > 1:
                raise ValueError(
                    f"These results hold several models {results.models}; pass model= the one this card describes."
                )
            model = results.models[0]
        if model not in results.models:
            raise ValueError(f"No results of {model!r} here; the results hold {results.models}.")
        if not before_training and self.model_name is None:
            self.model_name = display_name(model)
        own = self.before_name if before_training else self.model_name
        rows = [{**row, "model": own if row["model"] == model else display_name(row["model"])} for row in results.rows]
        keys = {(r["model"], r["task"], r["metric"], r["dim"]) for r in rows}
        kept = [
            r
            for r in (self.results.rows if self.results else [])
            if (r["model"], r["task"], r["metric"], r["dim"]) not in keys
        ]
        primary = {**(self.results.primary_metrics if self.results else {}), **results.primary_metrics}
        grid = [{**c, "model": own if c["model"] == model else display_name(c["model"])} for c in results.grid]
        renamed = {(c["model"], c["task"]) for c in grid}  # a new grid of a model and task replaces the old one
        grid = [
            c for c in (self.results.grid if self.results else []) if (c["model"], c["task"]) not in renamed
        ] + grid
        merged = Results(kept + rows, primary, grid=grid)
        self.check_lengths(merged)  # before anything changes: a refused merge leaves the card data as it was
        self.results = merged
        return self

    def check_lengths(self, results):
        """Refuse results whose rows were computed at different input lengths (`max_length`, tokens): side by side,
        a before/after or baseline row would compare the lengths, not the models. Rows before training without a
        recorded length were computed at the training's `evaluation["max_seq_length"]`."""
        models_at = {}
        for row in results.rows + results.grid:
            length = row.get("max_length")
            if length is None and row["model"] == self.before_name:
                length = self.evaluation.get("max_seq_length")
            if length is not None:
                models_at.setdefault(int(length), {})[row["model"]] = None
        if len(models_at) > 1:
            found = "; ".join(f"{', '.join(names)} at {n} tokens" for n, names in sorted(models_at.items()))
            before = [length for length, models in models_at.items() if self.before_name in models]
            length = before[0] if before else min(models_at)
            raise ValueError(
                f"The card's rows were computed at different input lengths ({found}): side by side they would "
                f"compare the lengths, not the models. Evaluate every model at one length, e.g. `mrl-text evaluate "
                f"MODEL ... --max-length {length}` (or evaluate(..., max_length={length})), then write the card again."
            )

    def own_results(self):
        """This model's rows only (what the model-index may carry)."""
        rows = [r for r in (self.results.rows if self.results else []) if r["model"] == self.model_name]
        return Results(rows, self.results.primary_metrics if self.results else None)

    def is_empty(self):
        return self == type(self)()

    def to_dict(self):
        data = asdict(self) | {"results": self.results.to_dict() if self.results else None}
        return json.loads(json.dumps(data, default=str))  # e.g. enums in the training arguments become strings

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown model card data field(s) {unknown}; known fields are {sorted(known)}.")
        results = data.get("results")
        results = Results(results["rows"], results.get("primary_metrics"), grid=results.get("grid") or ()) if results \
            else None
        return cls(**{**data, "results": results})

    def save(self, directory):
        write_atomic(Path(directory) / CARD_DATA_FILENAME, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory):
        """The card data saved in a model folder, or None when it has none."""
        path = Path(directory) / CARD_DATA_FILENAME
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError) as error:  # bad JSON, unknown fields, malformed results
            raise ValueError(f"{path}: not valid model card data ({error}); delete it or pass --overwrite.") from None


def model_card_data(model, create=True):
    """`model.model_card_data`, created on first use (None with `create=False` when the model has none). The
    deprecated `model.eval_results` / `model.card_data` attributes still work: they are folded into it, with a
    `DeprecationWarning`."""
    data = getattr(model, "model_card_data", None)
    deprecated = {old: getattr(model, old, None) for old in ("eval_results", "card_data")}
    deprecated = {old: value for old, value in deprecated.items() if value is not None}
    if data is None and not create and not deprecated:
        # A model loaded from a folder keeps the card saved there: saving it again (elsewhere, or in place after a
        # change) re-renders that card instead of dropping it or leaving a stale README.
        data = saved_card_data(model)
        if data is not None:
            model.model_card_data = data
    if data is None and not (create or deprecated):
        return None
    if data is None:
        data = MatryoshkaModelCardData()
        model.model_card_data = data
    for old, value in deprecated.items():
        new = (
            "model.model_card_data.add_results(results)" if old == "eval_results" else "model.model_card_data.details"
        )
        warnings.warn(
            f"model.{old} is deprecated; use model.model_card_data ({new}).", DeprecationWarning, stacklevel=2
        )
        if old == "eval_results":
            results = Results.from_json(value) if isinstance(value, (str, Path)) else value
            data.add_results(results, own_model_name(results, model_names(model, data)))
        else:
            details = dict(value)
            data.base_model = data.base_model or details.pop("base_model", None)
            known = {d.get("id") for d in data.train_datasets}
            data.train_datasets += [
                {"name": d, "id": d} for d in details.pop("datasets", None) or [] if d not in known
            ]
            data.details.update(details)
    return data


def saved_card_data(model):
    """The card data saved in the local folder `model` was loaded from (None when it has none). An unreadable file
    is left alone with a warning: saving the model must not fail over its old card."""
    folder = getattr(model, "name_or_path", None)
    if not folder or not os.path.isdir(folder):
        return None
    try:
        return MatryoshkaModelCardData.load(folder)
    except ValueError as error:
        warnings.warn(f"The model's card is not carried over: {error}", stacklevel=3)
        return None


def model_names(model, data=None, model_id=None):
    """The names this model's rows can have in a results table: its Hub id, folder, card name, class name."""
    path = getattr(model, "name_or_path", "") or ""
    names = [model_id, data.model_name if data else None, path, display_name(path) if path else None]
    return [name for name in dict.fromkeys(names + [type(model).__name__]) if name]


def own_model_name(results, names, strict=False):
    """Which model of `results` is the one a card describes: the first of `names` present. Without a match, a table
    of one model is that model's (unless `strict`); otherwise a `ValueError` names the models found."""
    by_path = {str(Path(m).resolve()): m for m in results.models if is_local_path(m)}
    for name in names:
        if name in results.models:
            return name
        if is_local_path(name) and str(Path(name).resolve()) in by_path:
            return by_path[str(Path(name).resolve())]
        if is_local_path(name) and portable_name(name) in results.models:  # how `mrl-text evaluate` names a folder
            return portable_name(name)
    for name in filter(is_local_path, names):  # two folders named alike: evaluate named them by their paths' ends
        parts = Path(name).resolve().parts
        ends = [m for m in results.models if "/" in m and parts[-len(m.split("/")) :] == tuple(m.split("/"))]
        if ends:
            return ends[0]
    if len(results.models) == 1 and not strict:
        return results.models[0]
    raise ValueError(
        f"None of the models in these results {results.models} is this model ({', '.join(map(repr, names))}); a card "
        "carries only its own model's results: name its rows (e.g. `mrl-text card ... --results-model NAME`)."
    )


def parse_trainer_metrics(metrics, tasks, primary_metrics=None):
    """`Results` from a Trainer's flat evaluation metrics (`eval_stsb_spearman_64`, `eval_sf_ndcg_at_10_64`)."""
    rows = []
    for key, value in metrics.items():
        for task in sorted(tasks, key=len, reverse=True):
            at = key.find(f"{task}_")
            if at < 0 or (at > 0 and key[at - 1] != "_"):
                continue
            metric, _, dim = key[at + len(task) + 1 :].rpartition("_")
            if metric and dim.isdigit():
                rows.append({"model": "", "task": task, "metric": metric.replace("_at_", "@"), "dim": int(dim),
                             "value": float(value)})
            break
    return Results(rows, primary_metrics)


class MatryoshkaModelCardCallback(TrainerCallback):
    """Fills `model.model_card_data` while a `MatryoshkaTrainer` trains (see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.started = None
        args, model = trainer.args, trainer.model
        data = model_card_data(model)
        data.model_name = data.model_name or Path(args.output_dir).name
        data.base_model = data.base_model or base_model_id(model)
        if not data.base_model and starting_point(model):  # a local folder: named in the card, never by its path
            data.base_model_name = data.base_model_name or display_name(starting_point(model))
        data.loss = describe_loss(getattr(trainer, "loss", None))
        data.hyperparameters = training_hyperparameters(args, getattr(trainer, "size_schedule", None))
        if trainer.train_dataset is not None and not data.train_datasets:
            data.train_datasets = [describe_dataset(trainer.train_dataset)]
        elif trainer.train_dataset is not None:  # named by the caller: add what only the data knows
            data.train_datasets[0] = {**describe_dataset(trainer.train_dataset), **data.train_datasets[0]}
        self.evaluators = list(getattr(trainer, "evaluators", None) or [])
        for evaluator in self.evaluators:
            if getattr(evaluator, "task_type", None):
                data.task_types.setdefault(evaluator.name, evaluator.task_type)
        max_seq_length = getattr(args, "max_seq_length", None)
        if max_seq_length and hasattr(model.config, "max_seq_length"):
            # The trainer evaluates at this length: saved in config.json, loading the folder reproduces the card.
            model.config.max_seq_length = max_seq_length
            data.evaluation["max_seq_length"] = max_seq_length
        data.versions = library_versions()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.evaluators or not metrics:
            return
        primary = {e.name: e.primary_metric for e in self.evaluators}
        results = parse_trainer_metrics(metrics, list(primary), primary)
        length = getattr(args, "max_seq_length", None)  # what the trainer's evaluators read (evaluator_metrics)
        if length:
            results = Results([{**row, "max_length": length} for row in results.rows], results.primary_metrics)
        if results.rows:
            data = model_card_data(self.trainer.model)
            data.add_results(results, before_training=state.global_step == 0)
            precisions = trained_precisions(data.loss)
            if state.global_step > 0 and precisions and state.is_world_process_zero:
                grid = self.precision_grid(precisions, length)
                if grid is not None:
                    data.add_results(grid)

    def precision_grid(self, precisions, max_length):
        """The size x precision grid of the trained precisions (float32 too) on the evaluators the grid scores (None
        when none of them does)."""
        from ..evaluation import evaluate_grid
        from ..evaluation.grid import SCORERS

        model = self.trainer.model
        evaluators = [e for e in self.evaluators if type(e) in SCORERS]
        if not evaluators:
            return None
        was_training = model.training
        try:
            grid = evaluate_grid(model, evaluators, precisions=list(dict.fromkeys(["float32", *precisions])),
                                 max_length=max_length, device=str(self.trainer.args.device))
        finally:
            model.train(was_training)
        if max_length:  # recorded as the trainer's own rows are (the length asked for), so the card can merge them
            grid = Results([{**r, "max_length": max_length} for r in grid.rows], grid.primary_metrics,
                           grid=[{**c, "max_length": max_length} for c in grid.grid])
        return grid

    def on_train_end(self, args, state, control, **kwargs):
        data = model_card_data(self.trainer.model)
        seconds = time.perf_counter() - self.started if self.started is not None else None
        losses = [log["train_loss"] for log in state.log_history if "train_loss" in log]
        data.training.update(
            {"steps": state.global_step, "epochs": round(state.epoch or 0, 2), "hardware": hardware()}
            | ({"training time": f"{seconds:.0f} s"} if seconds is not None else {})
            | ({"final training loss": round(losses[-1], 4)} if losses else {})
        )


__all__ = [
    "CARD_DATA_FILENAME",
    "MatryoshkaModelCardCallback",
    "MatryoshkaModelCardData",
    "base_model_id",
    "display_name",
    "model_card_data",
    "trained_precisions",
]
