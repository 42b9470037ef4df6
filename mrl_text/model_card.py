"""Model cards for Matryoshka models: Hub metadata (with a `model-index` entry per task and size) and a body with
the sizes, usage, per-size results, the Matryoshka curve plot, training details and the MRL citation.

The template ships inside the package (`mrl_text/model_cards/matryoshka_card.md`) so installed wheels have it.

```python
>>> from mrl_text.model_card import save_with_card
>>> save_with_card(model, "out/", results)    # weights, config, code, tokenizer, README.md, matryoshka_results.png
```
"""

import math
from pathlib import Path

from .evaluation import Results
from .file_utils import write_atomic

TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "matryoshka_card.md"
DUAL_ENCODER_TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "matryoshka_dual_encoder_card.md"
CARD_FILENAME = "README.md"
PLOT_FILENAME = "matryoshka_results.png"

# Hub task ids of our metrics: the model-index groups results by task and dataset.
TASK_TYPES = {
    "spearman": ("sentence-similarity", "Semantic Similarity"),
    "pearson": ("sentence-similarity", "Semantic Similarity"),
    "ndcg@10": ("text-retrieval", "Retrieval"),
    "mrr@10": ("text-retrieval", "Retrieval"),
    "recall@100": ("text-retrieval", "Retrieval"),
    "accuracy": ("text-classification", "Classification"),
    "knn_accuracy": ("text-classification", "Classification"),
}
# Image-text dual encoders (MatryoshkaDualEncoder): their metrics and Hub metadata.
TASK_TYPES.update(
    {f"{direction}_recall@{k}": ("image-text-retrieval", "Image-Text Retrieval")
     for direction in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
)
DUAL_ENCODER_CARD = {
    "template_path": DUAL_ENCODER_TEMPLATE_PATH,
    "pipeline_tag": "zero-shot-image-classification",
    "tags": ["matryoshka", "mrl-text", "image-text", "zero-shot-image-classification", "feature-extraction"],
}


def _config_of(model_or_config):
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "matryoshka_dimensions"):
        raise ValueError(f"{type(model_or_config).__name__} is not a Matryoshka model or config (no matryoshka_dimensions).")
    return config


def eval_results(results, model_name=None):
    """`huggingface_hub.EvalResult`s: one per task, metric and size (the metric's `config` names the size)."""
    from huggingface_hub import EvalResult

    # NaN (e.g. a correlation of constant similarities) is not valid model-index metadata: such rows stay out.
    rows = [
        r for r in results.rows if (model_name is None or r["model"] == model_name) and math.isfinite(r["value"])
    ]
    entries = []
    for row in rows:
        task_type, task_name = TASK_TYPES.get(row["metric"], ("feature-extraction", "Embedding"))
        entries.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=row["task"],
                dataset_name=row["task"],
                metric_type=row["metric"],
                metric_value=round(row["value"], 6),
                metric_name=f"{row['metric']} (dim {row['dim']})",
                metric_config=f"dim_{row['dim']}",
            )
        )
    return entries


def _size_rows(config, results, model_name):
    """The 'choosing a size' table: storage per size and, when results exist, quality relative to full size."""
    full = config.embedding_size
    task = metric = None
    if results is not None and results.rows:
        task = results.tasks[0]
        metric = results.metrics(task)[0]

    def value(dim):
        try:
            return results.value(task, metric, dim, model=model_name)
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


def build_card(
    model,
    results=None,
    model_id=None,
    base_model=None,
    datasets=None,
    license="apache-2.0",
    language="en",
    training=None,
    plot_filename=PLOT_FILENAME,
):
    """Render the model card (`huggingface_hub.ModelCard`) of a Matryoshka model.

    Args:
        model: a `MatryoshkaModel` or its config.
        results (`Results` or path to results.json, *optional*): evaluation rows; the model's own rows (its name, or
            the first model) go to the `model-index`, every model's rows to the body table.
        model_id (`str`, *optional*): Hub id used in the usage snippets; defaults to the model's name.
        base_model, datasets, license, language: Hub metadata. `base_model` defaults to the wrapped encoder's name.
        training (`dict`, *optional*): training details (loss, data, hyperparameters, ...) listed in the card;
            defaults to `model.card_data` when the training code set it.
        plot_filename (`str`, *optional*): the plot image next to the card (None: no image).
    """
    from huggingface_hub import ModelCard, ModelCardData

    config = _config_of(model)
    if isinstance(results, (str, Path)):
        results = Results.from_json(results)
    training = dict(training if training is not None else getattr(model, "card_data", None) or {})
    name_or_path = getattr(model, "name_or_path", "") or ""
    model_id = model_id or name_or_path or "path/to/model"
    base_model = base_model or training.pop("base_model", None) or getattr(config.encoder, "_name_or_path", None) or None
    if base_model and (Path(base_model).exists() or base_model.startswith(("/", "."))):
        base_model = None  # a local folder is not a Hub id: leave it out of the metadata
    datasets = datasets or training.pop("datasets", None)

    own_model = None
    if results is not None and results.rows:
        own_model = model_id if model_id in results.models else name_or_path if name_or_path in results.models else results.models[0]
    size_rows, guide_task, guide_metric = _size_rows(config, results, own_model)
    weights = config.matryoshka_weights or [1.0] * len(config.matryoshka_dimensions)

    dual = config.model_type == "matryoshka_dual_encoder"
    card_data = ModelCardData(
        model_name=model_id.rstrip("/").split("/")[-1],
        base_model=base_model,
        datasets=datasets,
        license=license,
        language=language,
        library_name="transformers",
        pipeline_tag=DUAL_ENCODER_CARD["pipeline_tag"] if dual else "sentence-similarity",
        tags=DUAL_ENCODER_CARD["tags"] if dual else
        ["matryoshka", "mrl-text", "sentence-embeddings", "feature-extraction", "sentence-transformers"],
        eval_results=eval_results(results, own_model) if own_model else None,
    )
    small_dims = [d for d in config.matryoshka_dimensions if d < config.embedding_size]
    card = ModelCard.from_template(
        card_data,
        template_path=str(DUAL_ENCODER_CARD["template_path"] if dual else TEMPLATE_PATH),
        wrapped_model_type=config.encoder.model_type,
        model_name=card_data.model_name,
        model_id=model_id,
        base_model=base_model,
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
        results_markdown=results.to_markdown() if results is not None and results.rows else None,
        eval_models=[m for m in results.models if m != own_model] if own_model else None,
        plot_filename=plot_filename if results is not None and results.rows else None,
        size_weights=list(zip(config.matryoshka_dimensions, weights)),
        training_details=[(key, value) for key, value in training.items() if value not in (None, "", [], {})],
    )
    return card


def write_card(directory, model, results=None, **card_kwargs):
    """Write `README.md` (and the results plot, when there are results) into a saved model's folder.

    Both files are rendered in memory first and written atomically: a failure leaves no half-written card.
    Returns the card path.
    """
    directory = Path(directory)
    if isinstance(results, (str, Path)):
        results = Results.from_json(results)
    card_kwargs["model_id"] = card_kwargs.get("model_id") or str(directory)  # snippets load this very folder
    card = build_card(model, results, **card_kwargs)
    plot = results.plot() if results is not None and results.rows else None
    if plot is not None:
        write_atomic(directory / card_kwargs.get("plot_filename", PLOT_FILENAME), plot)
    write_atomic(directory / CARD_FILENAME, str(card))
    return directory / CARD_FILENAME


def write_card_on_save(model, directory, repo_id=None):
    """Save hook (registered by `import mrl_text`): when the model carries evaluation results
    (`model.eval_results`: `Results` or a results.json path) or training details (`model.card_data`: dict),
    `save_pretrained` and `push_to_hub` write the card and plot next to the weights."""
    results = getattr(model, "eval_results", None)
    if results is None and not getattr(model, "card_data", None):
        return None
    return write_card(directory, model, results, model_id=repo_id)


def save_with_card(model, directory, results=None, **card_kwargs):
    """`model.save_pretrained(directory)` plus the model card and plot (from `results`, else `model.eval_results`).

    The training code sets `model.eval_results` (a `Results`) and `model.card_data` (a dict of training details);
    this writes them into the card. The modeling file stays free of card code so `trust_remote_code` keeps working.
    """
    model.save_pretrained(directory)
    results = results if results is not None else getattr(model, "eval_results", None)
    return write_card(directory, model, results, **card_kwargs)


__all__ = ["PLOT_FILENAME", "TEMPLATE_PATH", "build_card", "eval_results", "save_with_card", "write_card", "write_card_on_save"]
