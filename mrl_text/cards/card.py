"""Model cards for Matryoshka models: Hub metadata (with a `model-index` entry per task and size) and a body with
the sizes, usage, per-size results, the Matryoshka curve plot, training details and the citations.

The card is rendered from `model.model_card_data` (a `MatryoshkaModelCardData`, filled during training; see
`mrl_text.cards.card_data`). The template ships inside the package (`mrl_text/cards/templates/`) so installed wheels
have it.

```python
>>> model.save_pretrained("out/")      # with model.model_card_data set: README.md, matryoshka_results.png, card data
>>> from mrl_text.cards.card import save_with_card
>>> save_with_card(model, "out/", results)    # the same with explicit results of this model
```
"""

import copy
import math
from pathlib import Path

from ..evaluation import Results
from ..file_utils import write_atomic
from .card_data import (
    MatryoshkaModelCardData,
    base_model_id,
    display_name,
    is_local_path,
    model_card_data,
    model_names,
    own_model_name,
    starting_point,
    trained_precisions,
)

TEMPLATE_PATH = Path(__file__).parent / "templates" / "matryoshka_card.md"
DUAL_ENCODER_TEMPLATE_PATH = Path(__file__).parent / "templates" / "matryoshka_dual_encoder_card.md"
CARD_FILENAME = "README.md"
PLOT_FILENAME = "matryoshka_results.png"
BUDGET_PLOT_FILENAME = "matryoshka_budget.png"  # quality against bytes per vector, when the results hold a grid

# Hub task ids by metric, for results whose evaluator declared no task type (older results files).
TEXT_TASK_TYPES = {
    "spearman": "sentence-similarity",
    "pearson": "sentence-similarity",
    "ndcg@10": "text-retrieval",
    "mrr@10": "text-retrieval",
    "recall@100": "text-retrieval",
    "accuracy": "text-classification",
    "knn_accuracy": "text-classification",
}
# A dual encoder's accuracy is zero-shot image classification, its kNN accuracy is over image embeddings.
DUAL_ENCODER_TASK_TYPES = {"accuracy": "zero-shot-image-classification", "knn_accuracy": "image-classification"}
DUAL_ENCODER_TASK_TYPES.update(
    {
        f"{direction}_recall@{k}": "image-text-retrieval"
        for direction in ("image_to_text", "text_to_image")
        for k in (1, 5, 10)
    }
)
TASK_NAMES = {
    "sentence-similarity": "Semantic Similarity",
    "text-retrieval": "Retrieval",
    "text-classification": "Classification",
    "zero-shot-image-classification": "Zero-Shot Image Classification",
    "image-classification": "Image Classification",
    "image-text-retrieval": "Image-Text Retrieval",
    "feature-extraction": "Embedding",
}
DUAL_ENCODER_CARD = {
    "template_path": DUAL_ENCODER_TEMPLATE_PATH,
    "pipeline_tag": "zero-shot-image-classification",
    "tags": ["matryoshka", "mrl-text", "image-text", "zero-shot-image-classification", "feature-extraction"],
}
TEXT_CARD = {
    "template_path": TEMPLATE_PATH,
    "pipeline_tag": "sentence-similarity",
    "tags": ["matryoshka", "mrl-text", "sentence-embeddings", "feature-extraction", "sentence-transformers"],
}
# A masked-language model pretrained with nested sizes: the text template, told it is not (yet) an embedding model.
MASKED_LM_CARD = {
    "template_path": TEMPLATE_PATH,
    "pipeline_tag": "fill-mask",
    "tags": ["matryoshka", "mrl-text", "fill-mask"],
}


def config_of(model_or_config):
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "matryoshka_dimensions"):
        raise ValueError(
            f"{type(model_or_config).__name__} is not a Matryoshka model or config (no matryoshka_dimensions)."
        )
    return config


def is_dual_encoder(config):
    return config.model_type == "matryoshka_dual_encoder"


def is_masked_lm(model_or_config):
    """A `MatryoshkaForMaskedLM`, or the config it saved (cards are also rebuilt from a stored config alone)."""
    architectures = getattr(config_of(model_or_config), "architectures", None) or []
    return type(model_or_config).__name__ == "MatryoshkaForMaskedLM" or "MatryoshkaForMaskedLM" in architectures


def task_type(task, metric, results, card_data=None, dual_encoder=False):
    """The Hub task id of a result: as its evaluator declared it, else from the metric and the kind of model."""
    declared = (card_data.task_types.get(task) if card_data else None) or None
    if declared is None and callable(getattr(results, "task_type", None)):
        declared = results.task_type(task)
    if declared:
        return declared
    table = DUAL_ENCODER_TASK_TYPES if dual_encoder else TEXT_TASK_TYPES
    return table.get(metric, "feature-extraction")


def eval_results(results, model_name=None, card_data=None, dual_encoder=False):
    """`huggingface_hub.EvalResult`s: one per task, metric and size (the metric's `config` names the size)."""
    from huggingface_hub import EvalResult

    datasets = card_data.eval_datasets if card_data else {}
    # NaN (e.g. a correlation of constant similarities) is not valid model-index metadata: such rows stay out.
    rows = [
        r for r in results.rows if (model_name is None or r["model"] == model_name) and math.isfinite(r["value"])
    ]
    entries = []
    for row in rows:
        kind = task_type(row["task"], row["metric"], results, card_data, dual_encoder)
        dataset = datasets.get(row["task"]) or {}
        entries.append(
            EvalResult(
                task_type=kind,
                task_name=TASK_NAMES.get(kind, kind.replace("-", " ").title()),
                dataset_type=dataset.get("id") or row["task"],
                dataset_name=dataset.get("name") or row["task"],
                metric_type=row["metric"],
                metric_value=round(row["value"], 6),
                metric_name=f"{row['metric']} (dim {row['dim']})",
                metric_config=f"dim_{row['dim']}",
            )
        )
    return entries


def _size_rows(config, results):
    """The 'choosing a size' table: storage per size and, when results exist, quality relative to full size."""
    full = config.embedding_size
    task = metric = None
    if results is not None and results.rows:
        task = results.tasks[0]
        metric = results.metrics(task)[0]

    def value(dim):
        try:
            return results.value(task, metric, dim)
        except KeyError:
            return None

    rows = []
    for dim in config.matryoshka_dimensions:
        row = {"dim": dim, "bytes": 4 * dim, "share": f"{100 * dim / full:.1f}%"}
        if task is not None:
            here, top = value(dim), value(full)
            row["value"] = "-" if here is None else f"{100 * here:.2f}"
            row["relative"] = "-" if here is None or not top else f"{100 * here / top:.1f}%"
        rows.append(row)
    return rows, task, metric


def _precisions_line(data, config):
    """The card line naming the precisions a quantization-aware model was trained for (None without them)."""
    precisions = trained_precisions(data.loss)
    if not precisions:
        return None
    ranged = sorted((int(k) for k in (getattr(config, "quantization_ranges", None) or {}) if "/" not in k),
                    reverse=True)
    scalar = [p for p in precisions if p in ("int8", "uint8")]
    ranges = (f"; the {'/'.join(scalar)} ranges tracked in training are in config.json (`quantization_ranges`, sizes "
              f"{', '.join(map(str, ranged))}), so `encode(precision=...)` makes the trained codes"
              if scalar and ranged else "")
    return (f"{', '.join(precisions)} at every size (quantization in the loop: the loss scored each size's prefix "
            f"as each of these precisions stores it){ranges}.")


def _training_details(data, config=None):
    """(label, text) lines of the card's training section."""
    lines = []
    if data.loss:
        config_dict = data.loss.get("config")
        lines.append(("Loss", f"`{data.loss['name']}`" + (f" with `{config_dict}`" if config_dict else "")))
    lines.append(("Precisions trained", _precisions_line(data, config)))
    for dataset in data.train_datasets:
        name = dataset.get("name") or dataset.get("id") or "(unnamed)"
        facts = [f"{dataset['rows']:,} rows" if dataset.get("rows") is not None else None,
                 f"columns {', '.join(dataset['columns'])}" if dataset.get("columns") else None]
        facts = [fact for fact in facts if fact]
        lines.append(("Training data", name + (f" ({'; '.join(facts)})" if facts else "")))
    if data.hyperparameters:
        lines.append(
            ("Hyperparameters (non-default)", ", ".join(f"`{k}`: {v}" for k, v in data.hyperparameters.items()))
        )
    for key, value in data.training.items():
        lines.append((key[:1].upper() + key[1:], value))
    if data.evaluation.get("max_seq_length"):
        lines.append(("Evaluated at", f"max_seq_length {data.evaluation['max_seq_length']} (saved in config.json, so "
                                       "loading this folder and evaluating again gives these numbers)"))
    lines += [(key, value) for key, value in data.details.items()]
    if data.versions:
        lines.append(("Versions", ", ".join(f"{k} {v}" for k, v in data.versions.items())))
    return [(key, value) for key, value in lines if value not in (None, "", [], {})]


def adaptor_section(config):
    """The card's adaptor section from `config.adaptor` (which travels with the weights, so a card written later
    still has it): what it was fit on and its validation figures at every size, or None without an adaptor."""
    adaptor = getattr(config, "adaptor", None)
    if not adaptor:
        return None
    summary = adaptor.get("fit_summary") or {}
    options = summary.get("options") or {}
    objective = summary.get("objective")
    epochs = [
        f"{options[key]} {stage} epochs"
        for key, stage in (("epochs", "unsupervised"), ("supervised_epochs", "supervised"))
        if key in options and objective in (stage, "both")
    ]
    facts = [
        f"{summary['corpus_texts']:,} corpus texts"
        if summary.get("corpus_texts") is not None
        else (f"{summary['corpus_embeddings']:,} corpus embeddings" if summary.get("corpus_embeddings") else None),
        f"{summary['pairs']:,} (query, document) pairs" if summary.get("pairs") else None,
        f"{summary['queries']:,} queries" if summary.get("queries") and not summary.get("pairs") else None,
        f"{summary['validation_rows']:,} corpus rows held out for validation"
        if summary.get("validation_rows")
        else None,
    ]
    rows = [{"dim": dim, "truncation": f"{100 * v['truncation']:.2f}", "adaptor": f"{100 * v['adaptor']:.2f}",
             "used": (f"adaptor ({v['candidate']})" if v.get("candidate") else "adaptor") if v.get("adapted")
             else "plain truncation"}
            for dim, v in sorted((summary.get("validation") or {}).items(), key=lambda item: -int(item[0]))]
    return {
        "rotation": adaptor.get("rotation") or "none", "hidden_size": adaptor.get("hidden_size"),
        # A per-size choice: which map serves which size (its top-level rotation and MLP fields describe no map).
        "per_size": ", ".join(f"{dim} {name}" for dim, name in (adaptor.get("chosen") or {}).items())
        if adaptor.get("candidates") else None,
        "num_layers": adaptor.get("num_layers"), "adapted": adaptor.get("adapted_dimensions") or [],
        "description": summary.get("description"), "objective": objective, "epochs": ", ".join(epochs),
        "facts": "; ".join(fact for fact in facts if fact), "rows": rows,
        # The table shows the first metric; a gate that checks more (e.g. a correlation that must not drop) says so.
        "metric": (summary.get("validation_metric") or "").split("; ")[0],
        "also": "; ".join((summary.get("validation_metric") or "").split("; ")[1:]),
    }


def resolve_card_data(model, results=None, results_model=None, card_data=None, **overrides):
    """A copy of the card data a card is rendered from: `card_data` (default `model.model_card_data`), plus `results`
    (this model's rows: `results_model` names them, else the model's name or Hub id must match) and `overrides`."""
    data = card_data if card_data is not None else model_card_data(model, create=False)
    data = copy.deepcopy(data) if data is not None else MatryoshkaModelCardData()
    if isinstance(results, (str, Path)):
        results = Results.from_json(results)
    if results is not None and results.rows:
        own = results_model or own_model_name(results, model_names(model, data, overrides.get("model_id")))
        data.add_results(results, own)
    training = overrides.pop("training", None)
    datasets = overrides.pop("datasets", None)
    if training:
        details = dict(training)
        data.base_model = data.base_model or details.pop("base_model", None)
        datasets = datasets or details.pop("datasets", None)
        data.details.update(details)
    if datasets:
        data.train_datasets = [{"name": d, "id": d} for d in datasets]
    for key, value in overrides.items():
        if value is not None:
            setattr(data, key, value)
    return data


def build_card(model, results=None, model_id=None, base_model=None, datasets=None, license=None, language=None,
               training=None, plot_filename=PLOT_FILENAME, card_data=None, results_model=None):
    """Render the model card (`huggingface_hub.ModelCard`) of a Matryoshka model.

    Args:
        model: a `MatryoshkaModel` / `MatryoshkaDualEncoder` or its config.
        results (`Results` or path to results.json, *optional*): more results; this model's rows (named by
            `results_model`, else by its name or Hub id) go to the `model-index`, every model's rows to the body.
        model_id (`str`, *optional*): Hub id used in the usage snippets; defaults to the card data's, else the
            model's name.
        base_model, datasets, license, language: Hub metadata overriding the card data's.
        training (`dict`, *optional*): more training lines for the card (the card data's `details`).
        plot_filename (`str`, *optional*): the plot image next to the card (None: no image).
        card_data ([`MatryoshkaModelCardData`], *optional*): defaults to `model.model_card_data`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    config = config_of(model)
    data = resolve_card_data(
        model, results, results_model, card_data, model_id=model_id, base_model=base_model, datasets=datasets,
        license=license, language=language, training=training,
    )
    name_or_path = getattr(model, "name_or_path", "") or ""
    model_id = data.model_id or (display_name(name_or_path) if name_or_path else None) or "path/to/model"
    # Given by the caller: trusted unless it is a local path. Read from the config: only an `org/name` Hub id.
    base_model = data.base_model or base_model_id(config) or None
    base_model_name = data.base_model_name or display_name(base_model or starting_point(config) or "") or None
    if base_model and is_local_path(base_model):
        base_model = None  # a local folder is not a Hub id: named in the text, left out of the metadata
    own = data.own_results()
    all_results = data.results if data.results is not None and data.results.rows else None
    size_rows, guide_task, guide_metric = _size_rows(config, own if own.rows else None)
    weights = config.matryoshka_weights or [1.0] * len(config.matryoshka_dimensions)

    dual = is_dual_encoder(config)
    masked_lm = not dual and is_masked_lm(model)
    kind = DUAL_ENCODER_CARD if dual else MASKED_LM_CARD if masked_lm else TEXT_CARD
    card_metadata = ModelCardData(
        model_name=data.model_name or model_id.rstrip("/").split("/")[-1],
        base_model=base_model,
        datasets=[d["id"] for d in data.train_datasets if d.get("id")] or None,
        license=data.license,
        language=data.language,
        library_name="transformers",
        pipeline_tag=kind["pipeline_tag"],
        tags=kind["tags"],
        eval_results=eval_results(own, data.model_name, data, dual) if own.rows else None,
    )
    small_dims = [d for d in config.matryoshka_dimensions if d < config.embedding_size]
    return ModelCard.from_template(
        card_metadata,
        template_path=str(kind["template_path"]),
        wrapped_model_type=config.encoder.model_type,
        masked_lm=masked_lm,
        model_name=card_metadata.model_name,
        model_id=model_id,
        base_model=base_model,
        base_model_name=base_model_name,
        dims=config.matryoshka_dimensions,
        full_dim=config.embedding_size,
        default_dim=config.truncate_dim or config.embedding_size,
        example_dim=64 if 64 in small_dims else (small_dims[0] if small_dims else config.embedding_size),
        pooling=getattr(config, "pooling", None),  # dual encoders: each tower pools its own way
        normalize=getattr(config, "normalize", True),
        size_rows=size_rows,
        size_guide=guide_task is not None,
        size_guide_task=guide_task,
        size_guide_metric=guide_metric,
        results_markdown=all_results.to_markdown() if all_results else None,
        eval_models=[m for m in all_results.models if m != data.model_name] if all_results else None,
        plot_filename=plot_filename if all_results else None,
        budget_plot_filename=BUDGET_PLOT_FILENAME if all_results and all_results.grid and plot_filename else None,
        size_weights=list(zip(config.matryoshka_dimensions, weights)),
        training_details=_training_details(data, config),
        loss_citation=(data.loss or {}).get("citation"),
        adaptor=None if dual else adaptor_section(config),
    )


def write_card(directory, model, results=None, **card_kwargs):
    """Write `README.md`, the results plot (when there are results) and the card data (`model_card_data.json`, which
    `mrl-text card` merges into) into a saved model's folder.

    Everything is rendered in memory first and written atomically: a failure leaves no half-written card.
    `card_kwargs` are those of `build_card`. Returns the card path.
    """
    directory = Path(directory)
    data = resolve_card_data(
        model, results, card_kwargs.pop("results_model", None), card_kwargs.pop("card_data", None),
        **{key: card_kwargs.pop(key) for key in ("base_model", "datasets", "license", "language", "training")
           if key in card_kwargs},
    )
    # The snippets load this folder by the path the caller gave; an absolute path names only the folder.
    folder = str(directory) if not directory.is_absolute() else directory.name
    card_kwargs["model_id"] = card_kwargs.get("model_id") or data.model_id or folder
    card = build_card(model, card_data=data, **card_kwargs)
    plot_filename = card_kwargs.get("plot_filename", PLOT_FILENAME)
    plot = data.results.plot() if data.results is not None and data.results.rows and plot_filename else None
    if plot is not None:
        write_atomic(directory / plot_filename, plot)
        if data.results.grid:
            write_atomic(directory / BUDGET_PLOT_FILENAME, data.results.plot_budget())
    data.save(directory)
    write_atomic(directory / CARD_FILENAME, str(card))
    return directory / CARD_FILENAME


def write_card_on_save(model, directory, repo_id=None):
    """Save hook (registered by `import mrl_text`): when the model carries card data (`model.model_card_data`, filled
    by training) or an adaptor, `save_pretrained`, checkpoints and `push_to_hub` write the card and plot next to
    the weights."""
    data = model_card_data(model, create=False)
    if (data is None or data.is_empty()) and not getattr(config_of(model), "adaptor", None):  # an adaptor has a story
        return None
    return write_card(directory, model, card_data=data, model_id=repo_id)


def save_with_card(model, directory, results=None, **card_kwargs):
    """`model.save_pretrained(directory)` plus the model card and plot, with `results` of this model (see
    `build_card` for `results_model` and the other arguments). The modeling file stays free of card code so
    `trust_remote_code` keeps working."""
    model.save_pretrained(directory)
    return write_card(directory, model, results, **card_kwargs)


__all__ = [
    "PLOT_FILENAME",
    "TEMPLATE_PATH",
    "build_card",
    "eval_results",
    "save_with_card",
    "write_card",
    "write_card_on_save",
]
