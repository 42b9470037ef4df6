"""Evaluate an embedding model at every Matryoshka size: STS, retrieval and classification on frozen embeddings.

Every evaluator encodes each of its texts once, at full size, and scores every size from the prefixes with
`truncate_embeddings` (slice, then re-normalize): evaluating seven sizes costs one encoding pass, not seven.
The same evaluators take a `MatryoshkaModel`, a plain transformers encoder, or a sentence-transformers model, so
baselines are measured on equal terms. Results come back as one tidy table of rows
`{"model", "task", "metric", "dim", "value"}` (values are fractions) written as JSON, markdown and a plot.

```python
>>> from mrl_text.data import load_sts
>>> from mrl_text.evaluation import STSEvaluator, evaluate
>>> results = evaluate("out/", [STSEvaluator(*load_sts("stsb/test.tsv"), name="stsb")])
>>> results.value("stsb", "spearman", 64)
```
"""

import json
import os
from pathlib import Path

import torch

from . import metrics
from .configuration_matryoshka import check_dim
from .file_utils import write_atomic
from .modeling_matryoshka import MatryoshkaModel, truncate_embeddings

DEFAULT_BATCH_SIZE = 32


# ---------------------------------------------------------------------------------------------------------------
# Models as embedders


class Embedder:
    """A model as the evaluators see it: `encode(texts)` gives full-size float embeddings `(n, full_dim)`.

    Attributes:
        dims (`list[int]`): the sizes to score, largest first.
        normalize (`bool`): whether the model's embeddings are unit length; truncated prefixes are then
            re-normalized (what the model itself returns at that size).
        name (`str`): the model's name in result tables.
        full_dim (`int`): the embedding size.
    """

    def __init__(self, encode_fn, full_dim, dims, normalize, name):
        self._encode_fn = encode_fn
        self.full_dim = int(full_dim)
        self.dims = _check_dims(dims, self.full_dim, name)
        self.normalize = bool(normalize)
        self.name = str(name)

    def with_dims(self, dims):
        """The same model scored at other sizes."""
        return Embedder(self._encode_fn, self.full_dim, dims, self.normalize, self.name)

    def encode(self, texts):
        """Full-size embeddings of `texts` as a CPU float tensor `(len(texts), full_dim)`."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.full_dim)
        embeddings = torch.as_tensor(self._encode_fn(texts)).float().cpu()
        if embeddings.shape != (len(texts), self.full_dim):
            raise ValueError(
                f"{self.name}: encoding {len(texts)} texts gave shape {tuple(embeddings.shape)}, expected "
                f"({len(texts)}, {self.full_dim})."
            )
        return embeddings

    def truncate(self, embeddings, dim):
        """The model's embedding at size `dim`, from full-size embeddings."""
        return truncate_embeddings(embeddings, dim, self.normalize)

    def __repr__(self):
        return f"Embedder(name={self.name!r}, full_dim={self.full_dim}, dims={self.dims}, normalize={self.normalize})"


def _check_dims(dims, full_dim, name):
    if isinstance(dims, int):
        dims = [dims]
    dims = list(dims)
    if not dims:
        raise ValueError(f"{name}: no sizes to evaluate; pass dims such as [{full_dim}, 64].")
    return sorted({check_dim(dim, full_dim, owner=f"{name}: size") for dim in dims}, reverse=True)


def _model_file(name_or_path, filename):
    """Path of `filename` in a local model folder or a Hub repository (cache first; None when it has none)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path / filename if (path / filename).is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(name_or_path), filename))
    except Exception:  # absent file, unknown repo, or offline without a cached copy: all mean "not there"
        return None


def _load_model(name_or_path, device):
    """A MatryoshkaModel, SentenceTransformer or plain encoder (as a one-size MatryoshkaModel) from a folder or id."""
    config_file = _model_file(name_or_path, "config.json")
    modules_file = _model_file(name_or_path, "modules.json")
    if config_file is None and modules_file is None:
        raise FileNotFoundError(
            f"{name_or_path}: not a model folder (no config.json or modules.json) and not found on the Hub or in "
            "its cache; pass a MatryoshkaModel folder, a transformers encoder, or a sentence-transformers model."
        )
    model_type = json.loads(config_file.read_text()).get("model_type") if config_file else None
    if model_type == "matryoshka":
        model = MatryoshkaModel.from_pretrained(name_or_path)
    elif modules_file is not None:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(name_or_path), device=device)
    else:
        # A plain encoder: mean pooling and unit length, the usual sentence-embedding recipe, via the one model class.
        model = MatryoshkaModel.from_encoder(str(name_or_path), pooling="mean", normalize=True)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def _sentence_transformer_embedder(model, dims, batch_size, max_length, device, show_progress_bar, name):
    if max_length:
        model.max_seq_length = max_length
    normalize = any(
        type(module).__name__ == "Normalize" or getattr(module, "normalize", None) is True for module in model
    )
    nested = next(
        (
            getattr(module, "config").matryoshka_dimensions
            for module in model.modules()
            if hasattr(getattr(module, "config", None), "matryoshka_dimensions")
        ),
        None,
    )
    with model.truncate_embeddings(None):
        full_dim = max(nested) if nested else model.get_embedding_dimension()
    # A Matryoshka module inside the pipeline (mrl_text.sentence_transformers) takes `dim=` and may otherwise apply
    # the config's truncate_dim: ask it for the full size explicitly.
    size_kwargs = {"dim": full_dim} if "dim" in (model.get_model_kwargs() or []) else {}

    def encode(texts):
        with model.truncate_embeddings(None):  # full size: the evaluators truncate themselves
            return model.encode(
                texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar,
                device=device, **size_kwargs,
            )

    if full_dim is None:
        full_dim = encode(["a"]).shape[-1]
    return Embedder(encode, full_dim, dims or nested or [full_dim], normalize, name)


def as_embedder(model, dims=None, batch_size=DEFAULT_BATCH_SIZE, max_length=None, device=None, show_progress_bar=False):
    """Wrap any supported model as an [`Embedder`] (full-size `encode`, the sizes to score, `normalize`, `name`).

    Args:
        model: a `MatryoshkaModel` (or a task model holding one), a folder or hub id of a Matryoshka model, a plain
            transformers encoder folder or hub id (mean pooling, unit length), a `SentenceTransformer` or its
            folder / hub id, or an `Embedder`.
        dims (`list[int]`, *optional*): sizes to score; defaults to the config's `matryoshka_dimensions`, else the
            full size. A size larger than the model's raises a `ValueError` naming it.
        batch_size, max_length, device, show_progress_bar: encoding options (`max_length` sets a
            SentenceTransformer's `max_seq_length`).
    """
    if isinstance(model, Embedder):
        return model if dims is None else model.with_dims(dims)
    name = None
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        model = _load_model(model, device)
    if isinstance(getattr(model, "matryoshka", None), MatryoshkaModel):  # e.g. MatryoshkaForSequenceClassification
        model = model.matryoshka
    if isinstance(model, MatryoshkaModel):
        if device is not None:
            model = model.to(device)
        config = model.config

        def encode(texts):
            return model.encode(
                texts,
                dim=config.embedding_size,
                batch_size=batch_size,
                max_length=max_length,
                show_progress_bar=show_progress_bar,
            )

        name = name or model.name_or_path or "MatryoshkaModel"
        return Embedder(encode, config.embedding_size, dims or config.matryoshka_dimensions, config.normalize, name)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # pragma: no cover - sentence-transformers is a dependency
        SentenceTransformer = ()
    if isinstance(model, SentenceTransformer):
        name = name or getattr(model.model_card_data, "base_model", None) or "SentenceTransformer"
        return _sentence_transformer_embedder(model, dims, batch_size, max_length, device, show_progress_bar, name)
    raise TypeError(
        f"Cannot evaluate a {type(model).__name__}; pass a MatryoshkaModel, a SentenceTransformer, a model folder or "
        "hub id, or an Embedder."
    )


def _encode_once(embedder, texts):
    """Encode the distinct texts of `texts` in one call; returns `(embeddings, row of each text)`."""
    index = {}
    for text in texts:
        index.setdefault(text, len(index))
    embeddings = embedder.encode(list(index))
    return embeddings, torch.tensor([index[text] for text in texts], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# Evaluators


class Evaluator:
    """Base class: encode the task's texts once at full size, then score every size from the prefixes.

    Subclasses set `primary_metric`, implement `_embed(embedder)` (one encoding pass, returns what `_score` needs)
    and `_score(embedder, embedded, dim) -> {metric: value}`.
    """

    primary_metric = None

    def __init__(self, name):
        if not name or not isinstance(name, str):
            raise ValueError(f"An evaluator needs a non-empty task name; got {name!r}.")
        self.name = name

    def evaluate(self, model, dims=None, **embedder_kwargs):
        """Rows `{"model", "task", "metric", "dim", "value"}` for every size of `dims` (default: the model's)."""
        embedder = as_embedder(model, dims, **embedder_kwargs)
        embedded = self._embed(embedder)
        rows = []
        for dim in embedder.dims:
            for metric, value in self._score(embedder, embedded, dim).items():
                rows.append({"model": embedder.name, "task": self.name, "metric": metric, "dim": dim, "value": value})
        return rows

    def _embed(self, embedder):  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, embedder, embedded, dim):  # pragma: no cover - abstract
        raise NotImplementedError


def _require(name, **sequences):
    for what, values in sequences.items():
        if len(values) == 0:
            raise ValueError(f"{name}: {what} is empty; an evaluation needs examples.")


class STSEvaluator(Evaluator):
    """Semantic textual similarity: Spearman (primary) and Pearson correlation of cosine similarity with gold scores."""

    primary_metric = "spearman"

    def __init__(self, sentences1, sentences2, scores, name="sts"):
        super().__init__(name)
        self.sentences1, self.sentences2, self.scores = list(sentences1), list(sentences2), [float(s) for s in scores]
        _require(name, sentences1=self.sentences1)
        if not len(self.sentences1) == len(self.sentences2) == len(self.scores):
            raise ValueError(
                f"{name}: sentences1, sentences2 and scores differ in length "
                f"({len(self.sentences1)}, {len(self.sentences2)}, {len(self.scores)})."
            )

    def _embed(self, embedder):
        embeddings, rows = _encode_once(embedder, self.sentences1 + self.sentences2)
        return embeddings, rows[: len(self.sentences1)], rows[len(self.sentences1) :]

    def _score(self, embedder, embedded, dim):
        embeddings, rows1, rows2 = embedded
        unit = truncate_embeddings(embeddings, dim, normalize=True)  # cosine: unit prefixes, whatever the model does
        cosine = (unit[rows1] * unit[rows2]).sum(-1).tolist()
        return {
            "spearman": metrics.spearman(cosine, self.scores),
            "pearson": metrics.pearson(cosine, self.scores),
        }


class RetrievalEvaluator(Evaluator):
    """Retrieval by exact cosine search: nDCG@10 (primary), MRR@10 and Recall@100.

    The corpus is scored in chunks of `chunk_size` documents, keeping a running top-k per query, so memory holds
    the full-size corpus embeddings once plus one `(queries, chunk_size)` score block, never a full score matrix.

    Args:
        corpus (`dict[str, str]`): document id -> text.
        queries (`dict[str, str]`): query id -> text.
        qrels (`dict[str, dict[str, int]]`): query id -> {document id: relevance}.
        chunk_size, query_chunk_size (`int`): documents / queries per score block.
        device (`str`, *optional*): where the score blocks are computed; defaults to CUDA when available.
    """

    primary_metric = "ndcg@10"
    cutoffs = {"ndcg": 10, "mrr": 10, "recall": 100}

    def __init__(
        self, corpus, queries, qrels, name="retrieval", chunk_size=50_000, query_chunk_size=1_024, device=None
    ):
        super().__init__(name)
        _require(name, corpus=corpus, queries=queries, qrels=qrels)
        unknown_queries = sorted(q for q in qrels if q not in queries)
        unknown_docs = sorted({d for docs in qrels.values() for d in docs if d not in corpus})
        if unknown_queries or unknown_docs:
            raise ValueError(
                f"{name}: qrels name unknown queries {unknown_queries[:10]} / documents {unknown_docs[:10]}."
            )
        self.doc_ids = list(corpus)
        self.doc_texts = [corpus[d] for d in self.doc_ids]
        self.query_ids = [q for q in queries if q in qrels]
        _require(name, **{"queries with qrels": self.query_ids})
        self.query_texts = [queries[q] for q in self.query_ids]
        self.qrels = qrels
        self.chunk_size = int(chunk_size)
        self.query_chunk_size = int(query_chunk_size)
        # The search runs chunk by chunk on this device (the embeddings stay in CPU memory).
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    def _embed(self, embedder):
        embeddings, rows = _encode_once(embedder, self.query_texts + self.doc_texts)
        return embeddings, rows[: len(self.query_texts)], rows[len(self.query_texts) :]

    def search(self, embeddings, query_rows, doc_rows, dim, k):
        """Top-k documents by cosine at size `dim`: indices into `doc_rows`, `(n_queries, k)`, best first.

        `embeddings` holds every distinct text once at full size; queries and documents are gathered from it one
        chunk at a time, so no second copy of the corpus is ever made.
        """
        k = min(k, len(doc_rows))
        results = []
        for q_start in range(0, len(query_rows), self.query_chunk_size):
            query_chunk = embeddings[query_rows[q_start : q_start + self.query_chunk_size]].to(self.device)
            queries = truncate_embeddings(query_chunk, dim, True)
            best_scores = torch.empty(queries.shape[0], 0, device=self.device)
            best_index = torch.empty(queries.shape[0], 0, dtype=torch.long, device=self.device)
            for start in range(0, len(doc_rows), self.chunk_size):
                doc_chunk = embeddings[doc_rows[start : start + self.chunk_size]].to(self.device)
                docs = truncate_embeddings(doc_chunk, dim, True)
                scores = queries @ docs.T
                top = scores.topk(min(k, scores.shape[1]), dim=1)
                merged_scores = torch.cat([best_scores, top.values], dim=1)
                merged_index = torch.cat([best_index, top.indices + start], dim=1)
                keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
                best_scores, best_index = merged_scores.gather(1, keep), merged_index.gather(1, keep)
            results.append(best_index.cpu())
        return torch.cat(results)

    def _score(self, embedder, embedded, dim):
        embeddings, query_rows, doc_rows = embedded
        top = self.search(embeddings, query_rows, doc_rows, dim, max(self.cutoffs.values()))
        rankings = [[self.doc_ids[i] for i in row] for row in top.tolist()]
        return metrics.retrieval_scores(rankings, [self.qrels[q] for q in self.query_ids], self.cutoffs)


def fit_linear_probe(features, labels, seed=0, max_iter=1_000):
    """The project's linear probe on frozen embeddings: a logistic regression (fixed seed) fitted on `features`
    `(n, dim)`; shared by the classification evaluator and `AdaptiveClassifier`'s per-size heads."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=max_iter, random_state=seed).fit(features, labels)


class ClassificationEvaluator(Evaluator):
    """Classification on frozen embeddings: accuracy of a logistic-regression probe (primary), and of a cosine
    k-nearest-neighbour classifier (`knn_accuracy`) when `knn=True`. Fixed seed: reruns give the same numbers."""

    primary_metric = "accuracy"

    def __init__(
        self, train_texts, train_labels, test_texts, test_labels, name="classification", knn=False, knn_k=10, seed=0,
        max_iter=1_000,
    ):
        super().__init__(name)
        self.train_texts, self.train_labels = list(train_texts), list(train_labels)
        self.test_texts, self.test_labels = list(test_texts), list(test_labels)
        _require(name, train_texts=self.train_texts, test_texts=self.test_texts)
        for split, texts, labels in (("train", self.train_texts, self.train_labels), ("test", self.test_texts, self.test_labels)):
            if len(texts) != len(labels):
                raise ValueError(f"{name}: {split} has {len(texts)} texts but {len(labels)} labels.")
        if len(set(self.train_labels)) < 2:
            raise ValueError(f"{name}: the training labels hold a single class; a classifier needs at least two.")
        self.knn, self.knn_k, self.seed, self.max_iter = knn, knn_k, seed, max_iter

    def _embed(self, embedder):
        embeddings, rows = _encode_once(embedder, self.train_texts + self.test_texts)
        return embeddings, rows[: len(self.train_texts)], rows[len(self.train_texts) :]

    def _score(self, embedder, embedded, dim):
        from sklearn.neighbors import KNeighborsClassifier

        embeddings, train_rows, test_rows = embedded
        features = embedder.truncate(embeddings, dim)
        train, test = features[train_rows].numpy(), features[test_rows].numpy()
        probe = fit_linear_probe(train, self.train_labels, seed=self.seed, max_iter=self.max_iter)
        scores = {"accuracy": metrics.accuracy(probe.predict(test).tolist(), self.test_labels)}
        if self.knn:
            neighbours = KNeighborsClassifier(n_neighbors=min(self.knn_k, len(train)), metric="cosine")
            predictions = neighbours.fit(train, self.train_labels).predict(test).tolist()
            scores["knn_accuracy"] = metrics.accuracy(predictions, self.test_labels)
        return scores


# ---------------------------------------------------------------------------------------------------------------
# Results


ROW_KEYS = ("model", "task", "metric", "dim", "value")


class Results:
    """A tidy table of evaluation rows `{"model", "task", "metric", "dim", "value"}` (values are fractions).

    Args:
        rows (`list[dict]`): the rows.
        primary_metrics (`dict[str, str]`, *optional*): task -> its headline metric (tables and plots show it first).
    """

    def __init__(self, rows=(), primary_metrics=None):
        self.rows = []
        for row in rows:
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise ValueError(f"Result row {row!r} lacks {missing}; rows need {list(ROW_KEYS)}.")
            self.rows.append({**row, "dim": int(row["dim"]), "value": float(row["value"])})
        self.primary_metrics = dict(primary_metrics or {})

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
        rows, primary = [], {}
        for result in results:
            rows.extend(result.rows)
            primary.update(result.primary_metrics)
        return cls(rows, primary)

    def to_dict(self):
        return {"rows": self.rows, "primary_metrics": self.primary_metrics}

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
        return cls(data["rows"], data.get("primary_metrics"))

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


def evaluate(model, evaluators, dims=None, **embedder_kwargs):
    """Run `evaluators` on one model (encoding it once per evaluator) and return [`Results`].

    Args:
        model: anything [`as_embedder`] takes.
        evaluators (`list[Evaluator]`): with distinct names.
        dims (`list[int]`, *optional*): sizes to score; defaults to the model's `matryoshka_dimensions`.
        embedder_kwargs: `batch_size`, `max_length`, `device`, `show_progress_bar`.
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
    rows = [row for evaluator in evaluators for row in evaluator.evaluate(embedder)]
    return Results(rows, {e.name: e.primary_metric for e in evaluators})


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
    """`compute_metrics` for a `Trainer` of `MatryoshkaForSequenceClassification`: accuracy of every size's head.

    The Trainer passes `(logits, matryoshka_logits, embeddings)` as predictions; `matryoshka_logits` holds one
    `(n, num_labels)` array per size in `dims` order (the model's `config.matryoshka_dimensions`). Keys follow
    [`metrics_for_trainer`]: `{task}_accuracy_{dim}` (the Trainer adds `eval_`).
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


__all__ = [
    "fit_linear_probe",
    "classification_compute_metrics",
    "ClassificationEvaluator",
    "Embedder",
    "Evaluator",
    "Results",
    "RetrievalEvaluator",
    "STSEvaluator",
    "as_embedder",
    "evaluate",
    "metrics_for_trainer",
]


# ---------------------------------------------------------------------------------------------------------------
# Image-text dual encoders: zero-shot classification, image<->text retrieval, kNN on image embeddings


class DualEmbedder(Embedder):
    """An image-text dual encoder as the evaluators see it: `encode(texts)` and `encode_images(pixel_values)` give
    full-size embeddings in one shared space; prefixes are always re-normalized (contrastive models are cosine)."""

    def __init__(self, encode_fn, encode_images_fn, full_dim, dims, name):
        super().__init__(encode_fn, full_dim, dims, normalize=True, name=name)
        self._encode_images_fn = encode_images_fn

    def with_dims(self, dims):
        return DualEmbedder(self._encode_fn, self._encode_images_fn, self.full_dim, dims, self.name)

    def encode_images(self, pixel_values):
        """Full-size embeddings of preprocessed images `(n, C, H, W)` as a CPU float tensor `(n, full_dim)`."""
        embeddings = torch.as_tensor(self._encode_images_fn(pixel_values)).float().cpu()
        if embeddings.shape != (len(pixel_values), self.full_dim):
            raise ValueError(
                f"{self.name}: encoding {len(pixel_values)} images gave shape {tuple(embeddings.shape)}, expected "
                f"({len(pixel_values)}, {self.full_dim})."
            )
        return embeddings


def as_dual_embedder(model, dims=None, batch_size=DEFAULT_BATCH_SIZE, max_length=None, device=None):
    """Wrap a `MatryoshkaDualEncoder` (or its folder / hub id) as a [`DualEmbedder`] scored at `dims` (default: the
    config's `matryoshka_dimensions`)."""
    from .image_text import MatryoshkaDualEncoder

    if isinstance(model, DualEmbedder):
        return model if dims is None else model.with_dims(dims)
    name = None
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        model = MatryoshkaDualEncoder.from_pretrained(model)
        model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    if not isinstance(model, MatryoshkaDualEncoder):
        raise TypeError(
            f"Image-text evaluators take a MatryoshkaDualEncoder (or its folder), not a {type(model).__name__}; wrap "
            "ALIGN/CLIP with MatryoshkaDualEncoder.from_pretrained_dual(...)."
        )
    config = model.config
    return DualEmbedder(
        lambda texts: model.encode_texts(texts, config.embedding_size, batch_size, max_length, device),
        lambda pixels: model.encode_images(pixels, config.embedding_size, batch_size, device),
        config.embedding_size,
        dims or config.matryoshka_dimensions,
        name or model.name_or_path or "MatryoshkaDualEncoder",
    )


class ImageTextEvaluator(Evaluator):
    """Base class of the image-text evaluators: `evaluate` takes a `MatryoshkaDualEncoder` (or a `DualEmbedder`)."""

    def evaluate(self, model, dims=None, **embedder_kwargs):
        return super().evaluate(as_dual_embedder(model, dims, **embedder_kwargs))


def _check_images(name, pixel_values, labels=None):
    pixel_values = torch.as_tensor(pixel_values)
    if pixel_values.ndim != 4 or len(pixel_values) == 0:
        raise ValueError(
            f"{name}: pixel_values must be a non-empty (n, channels, height, width) batch; got shape "
            f"{tuple(pixel_values.shape)}."
        )
    if labels is not None and len(labels) != len(pixel_values):
        raise ValueError(f"{name}: {len(pixel_values)} images but {len(labels)} labels.")
    return pixel_values


class ZeroShotClassificationEvaluator(ImageTextEvaluator):
    """Zero-shot classification (CLIP/ALIGN): each image gets the class whose prompt embedding is nearest.

    A class's embedding at size `d` is the mean of its prompts' unit `d`-prefixes, re-normalized (prompt
    ensembling, Radford et al. 2021). Metric: `accuracy`.

    Args:
        pixel_values (`torch.Tensor` `(n, C, H, W)`): preprocessed images.
        labels (`list[int]`): the class index of each image.
        class_names (`list[str]`): one name per class index.
        templates (`list[str]`): prompts with one `{}` for the class name, e.g. `["a photo of a {}."]`.
    """

    primary_metric = "accuracy"

    def __init__(self, pixel_values, labels, class_names, templates=("a photo of a {}.",), name="zero-shot"):
        super().__init__(name)
        self.labels = [int(label) for label in labels]
        self.pixel_values = _check_images(name, pixel_values, self.labels)
        self.class_names, self.templates = list(class_names), list(templates)
        _require(name, class_names=self.class_names, templates=self.templates)
        if any("{}" not in t for t in self.templates):
            raise ValueError(f"{name}: every template needs a '{{}}' for the class name; got {self.templates}.")
        bad = sorted({label for label in self.labels if not 0 <= label < len(self.class_names)})
        if bad:
            raise ValueError(f"{name}: labels {bad[:10]} have no class name ({len(self.class_names)} names given).")

    def _embed(self, embedder):
        prompts = [t.format(c) for c in self.class_names for t in self.templates]
        return embedder.encode_images(self.pixel_values), embedder.encode(prompts)

    def _score(self, embedder, embedded, dim):
        images, prompts = embedded
        prompts = truncate_embeddings(prompts, dim, True).view(len(self.class_names), len(self.templates), dim)
        classes = truncate_embeddings(prompts.mean(1), None, True)
        predictions = (truncate_embeddings(images, dim, True) @ classes.T).argmax(1).tolist()
        return {"accuracy": metrics.accuracy(predictions, self.labels)}


class ImageTextRetrievalEvaluator(ImageTextEvaluator):
    """Image->text and text->image retrieval by cosine: Recall@1/5/10 in each direction.

    Recall@k here is the image-text convention (Flickr30k, COCO): the share of queries with at least one relevant
    item among the top k. Metrics: `image_to_text_recall@k`, `text_to_image_recall@k` (primary: image->text R@1).

    Args:
        pixel_values (`torch.Tensor` `(n_images, C, H, W)`): preprocessed images.
        texts (`list[str]`): the captions.
        relevant (`list[list[int]]`, *optional*): per image, the indices of its captions. Default: caption `i`
            belongs to image `i` (then `texts` and images must be equally many).
    """

    primary_metric = "image_to_text_recall@1"
    ks = (1, 5, 10)

    def __init__(self, pixel_values, texts, relevant=None, name="image-text-retrieval"):
        super().__init__(name)
        self.pixel_values = _check_images(name, pixel_values)
        self.texts = list(texts)
        _require(name, texts=self.texts)
        if relevant is None:
            if len(self.texts) != len(self.pixel_values):
                raise ValueError(
                    f"{name}: {len(self.pixel_values)} images but {len(self.texts)} captions; pass `relevant` (the "
                    "caption indices of each image) when they are not paired one to one."
                )
            relevant = [[i] for i in range(len(self.texts))]
        if len(relevant) != len(self.pixel_values):
            raise ValueError(f"{name}: `relevant` has {len(relevant)} entries for {len(self.pixel_values)} images.")
        self.relevance = torch.zeros(len(self.pixel_values), len(self.texts), dtype=torch.bool)
        for image, captions in enumerate(relevant):
            for caption in captions:
                if not 0 <= caption < len(self.texts):
                    raise ValueError(f"{name}: image {image} names caption {caption}, but there are {len(self.texts)}.")
                self.relevance[image, caption] = True

    def _embed(self, embedder):
        texts, rows = _encode_once(embedder, self.texts)
        return embedder.encode_images(self.pixel_values), texts[rows]

    @staticmethod
    def _recall_at(scores, relevance, k):
        """Share of rows of `scores` (queries x candidates) with a relevant candidate in their top k."""
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        return relevance.gather(1, top).any(1).float().mean().item()

    def _score(self, embedder, embedded, dim):
        images, texts = (truncate_embeddings(e, dim, True) for e in embedded)
        similarity = images @ texts.T
        scores = {}
        for direction, matrix, relevance in (
            ("image_to_text", similarity, self.relevance),
            ("text_to_image", similarity.T, self.relevance.T),
        ):
            for k in self.ks:
                scores[f"{direction}_recall@{k}"] = self._recall_at(matrix, relevance, k)
        return scores


class ImageKNNEvaluator(ImageTextEvaluator):
    """k-nearest-neighbour classification on image embeddings (the MRL paper's ALIGN metric): each test image
    takes the majority label of its `k` most cosine-similar training images. Metric: `knn_accuracy`."""

    primary_metric = "knn_accuracy"

    def __init__(self, train_pixel_values, train_labels, test_pixel_values, test_labels, k=10, name="image-knn"):
        super().__init__(name)
        self.train_labels, self.test_labels = list(train_labels), list(test_labels)
        self.train_pixel_values = _check_images(name, train_pixel_values, self.train_labels)
        self.test_pixel_values = _check_images(name, test_pixel_values, self.test_labels)
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"{name}: k={k!r} must be a positive integer.")
        self.k = k

    def _embed(self, embedder):
        return embedder.encode_images(self.train_pixel_values), embedder.encode_images(self.test_pixel_values)

    def _score(self, embedder, embedded, dim):
        from sklearn.neighbors import KNeighborsClassifier

        train, test = (truncate_embeddings(e, dim, True).numpy() for e in embedded)
        neighbours = KNeighborsClassifier(n_neighbors=min(self.k, len(train)), metric="cosine")
        predictions = neighbours.fit(train, self.train_labels).predict(test).tolist()
        return {"knn_accuracy": metrics.accuracy(predictions, self.test_labels)}


__all__ += [
    "DualEmbedder",
    "ImageKNNEvaluator",
    "ImageTextEvaluator",
    "ImageTextRetrievalEvaluator",
    "ZeroShotClassificationEvaluator",
    "as_dual_embedder",
]
