"""MTEB at every Matryoshka size: MTEB's own tasks, metrics and result files, one encoding pass per task.

MTEB evaluates one embedding size per run, and every run encodes the whole task again. Here each task's texts are
encoded once, at full size, and every requested size is served from those embeddings by truncation (the same
`Embedder.truncate` every mrl-text evaluator uses: slice, then re-normalize if the model normalizes).

How it hooks into MTEB: [`MatryoshkaEncoder`] is an MTEB encoder (an `mteb.models.AbsEncoder`, so it meets
`mteb.EncoderProtocol`) for one size. Its `encode` receives MTEB's DataLoader of text batches, looks every text up
in a [`FullSizeCache`] shared by all sizes of the task (encoding only the texts it has not seen), and returns the
prefixes at its size. [`evaluate_mteb`] loads each task's data once, calls `mteb.evaluate` once per size with that
size's encoder, and unloads the data and the cache before the next task. Everything after `encode` (similarities,
search, correlation, nDCG via pytrec_eval, the result files) is MTEB's own code. Each size's model metadata carries
`embed_dim` as an experiment setting, as `mteb.get_model(name, embed_dim=...)` does, so MTEB's result cache keeps
one JSON per task and size under `results/<model>/<revision>/experiments/embed_dim_<size>/`.

Offline, [`local_task`] builds an MTEB task from local data through MTEB's task classes (a registered task's name
keeps its definition: class, main score, settings; a new name makes a plain STS or retrieval task).

```python
>>> from mrl_text.evaluation.mteb import evaluate_mteb, local_task
>>> task = local_task("STSBenchmark", "stsb/test.tsv")  # online: mteb.get_tasks(["STSBenchmark"])
>>> report = evaluate_mteb("out/", [task], dims=[384, 64], output_folder="mteb-results/")
>>> print(report.to_markdown())
```
"""

import hashlib
import json
import os
from pathlib import Path

import torch

try:
    import datasets
    import mteb
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(
        f'mrl_text.evaluation.mteb needs the mteb package ({error}); install it with: pip install "mrl-text[mteb]"'
    ) from error

from ..file_utils import write_atomic
from .embedders import as_embedder, encode_once
from .results import Results

# Task types whose MTEB evaluation only encodes texts (a batch's "text" column) and scores the embeddings; the
# instruction-following types are left out because their queries carry an instruction this encoder would ignore.
SUPPORTED_TASK_TYPES = (
    "BitextMining", "Classification", "Clustering", "MultilabelClassification", "PairClassification", "Reranking",
    "Retrieval", "STS", "Summarization",
)
# The task types `local_task` builds from local files, with the main score a new task of that type reports.
LOCAL_TASK_TYPES = {"STS": "cosine_spearman", "Retrieval": "ndcg_at_10"}
# MTEB task type -> Hub model-index task type (what mrl-text's own evaluators declare for the same kind of task).
HUB_TASK_TYPES = {
    "STS": "sentence-similarity",
    "Retrieval": "text-retrieval",
    "Reranking": "text-retrieval",
    "Classification": "text-classification",
    "MultilabelClassification": "text-classification",
    "PairClassification": "text-classification",
}
# What ModelMeta calls a revision that is not known (a local folder has no commit).
NO_REVISION = "no_revision_available"
LOCAL_TASK_HELP = (
    "Offline, build tasks from local files: local_task(NAME, PATH) in Python or NAME=PATH on the command line, where "
    "PATH is a TSV with sentence1, sentence2, score (an STS task) or a BEIR folder with corpus.jsonl, queries.jsonl "
    "and qrels/test.tsv (a retrieval task); NAME is a registered MTEB task of that type (e.g. STSBenchmark, SciFact: "
    "its definition is kept) or a new name."
)


class FullSizeCache:
    """Full-size embeddings of every text one task has asked for, shared by all the sizes evaluated on it.

    `embed(texts)` encodes only the texts not seen before (each distinct text once, in one `Embedder.encode`, which
    batches them by length) and returns the full-size rows of `texts` in order. `encoded` counts the texts encoded.
    Memory: one float32 row of the full size per distinct text of the task; `clear()` frees it.
    """

    def __init__(self, embedder):
        self.embedder = embedder
        self._rows = {}
        self._chunks = []
        self.encoded = 0

    def embed(self, texts):
        texts = list(texts)
        new = [text for text in dict.fromkeys(texts) if text not in self._rows]
        if new:
            embeddings, _ = encode_once(self.embedder, new)  # `new` is distinct: row i is new[i]
            start = sum(len(chunk) for chunk in self._chunks)
            self._chunks.append(embeddings)
            self._rows.update({text: start + i for i, text in enumerate(new)})
            self.encoded += len(new)
            self._chunks = [torch.cat(self._chunks)] if len(self._chunks) > 1 else self._chunks
        if not texts:
            return torch.empty(0, self.embedder.full_dim)
        return self._chunks[0][torch.tensor([self._rows[text] for text in texts], dtype=torch.long)]

    def clear(self):
        self._rows, self._chunks = {}, []

    def __len__(self):
        return len(self._rows)


def model_meta(embedder, dim, revision=None):
    """MTEB's metadata for the model at size `dim`: its name, `embed_dim`, and `embed_dim` as an experiment setting
    (the result cache then keeps each size apart, as `mteb.get_model(name, embed_dim=...)` does)."""
    # `create_empty` + `model_copy` as MTEB's own wrappers do: a local model's name need not be "org/name".
    return ModelMeta.create_empty(
        overwrites={
            "name": embedder.name,
            "revision": revision or NO_REVISION,
            "embed_dim": int(dim),
            "experiment_kwargs": {"embed_dim": int(dim)},
            "similarity_fn_name": ScoringFunction.COSINE,
            "max_tokens": embedder.max_length,
            "framework": ["PyTorch"],
            "use_instructions": False,
        }
    )


class MatryoshkaEncoder(AbsEncoder):
    """An MTEB encoder: a model at one Matryoshka size, served from full-size embeddings shared by every size.

    Args:
        embedder: anything [`as_embedder`] takes (a `MatryoshkaModel`, a folder or Hub id, a `SentenceTransformer`, an
            `Embedder`).
        dim (`int`): the size this encoder returns.
        cache ([`FullSizeCache`], *optional*): shared by the encoders of the other sizes of a task, so a text is
            encoded once for all of them; default: a cache of its own.
        revision (`str`, *optional*): the model revision MTEB records.

    Prompts and instructions are not applied (as in mrl-text's own evaluators): a text has one embedding whether MTEB
    asks for it as a query or a document.
    """

    def __init__(self, embedder, dim, cache=None, revision=None):
        self.embedder = as_embedder(embedder, dims=[dim])
        self.dim = self.embedder.dims[0]
        self.cache = cache if cache is not None else FullSizeCache(self.embedder)
        self.mteb_model_meta = model_meta(self.embedder, self.dim, revision)
        self.model = self.embedder

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        texts = []
        for batch in inputs:
            if "text" not in batch:
                raise TypeError(
                    f"{task_metadata.name}: MTEB handed batches with {sorted(batch)} and no 'text'; MatryoshkaEncoder "
                    f"encodes text only (supported task types: {', '.join(SUPPORTED_TASK_TYPES)})."
                )
            texts.extend(batch["text"])
        return self.embedder.truncate(self.cache.embed(texts), self.dim).numpy()


class MTEBReport:
    """What [`evaluate_mteb`] returns: MTEB's task results per size, and the main scores as a [`Results`] table.

    Attributes:
        task_results (`dict[int, list[mteb.TaskResult]]`): size -> MTEB's results of every task at that size.
        results ([`Results`]): one row per task and size: the task's MTEB main score (e.g. `cosine_spearman`,
            `ndcg_at_10`), with the task's Hub task type where one fits; `mrl_text.cards` turns it into model-index
            rows per size (`eval_results`), and `results.plot()` draws it.
        eval_datasets (`dict[str, dict]`): task -> `{"name", "id"}` (the Hub dataset of a registered task; local data
            has no id), what a model card's model-index names each dataset.
        encoded_texts (`dict[str, int]`): task -> texts encoded (once each, whatever the number of sizes).
    """

    def __init__(self, task_results, results, eval_datasets, encoded_texts):
        self.task_results, self.results = task_results, results
        self.eval_datasets, self.encoded_texts = eval_datasets, encoded_texts

    def to_markdown(self):
        """One table: a row per task, a column per size, the task's main score x100."""
        dims = self.results.dims()
        lines = ["| task | main score | " + " | ".join(map(str, dims)) + " |", "|---|---|" + "---:|" * len(dims)]
        for task in self.results.tasks:
            metric = self.results.primary_metric(task)
            cells = [f"{100 * self.results.value(task, metric, dim):.2f}" for dim in dims]
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def save(self, folder):
        """Write `results.json` (the [`Results`] table), `results.md` (the table) and `results.png` (the plot)."""
        folder = Path(folder)
        self.results.to_json(folder / "results.json")
        write_atomic(folder / "results.md", self.to_markdown())
        self.results.plot(folder / "results.png")
        return folder

    def __repr__(self):
        return f"MTEBReport(tasks={self.results.tasks}, dims={self.results.dims()})"


def evaluate_mteb(
    model, tasks, dims=None, output_folder=None, overwrite_strategy="always", revision=None, **embedder_kwargs
):
    """Run MTEB tasks on one model at every size, encoding each task's texts once.

    Args:
        model: anything [`as_embedder`] takes.
        tasks: MTEB tasks (`mteb.get_tasks([...])` online, [`local_task`] offline), or their names (registered MTEB
            tasks, loaded from the Hub) or `NAME=PATH` strings ([`local_task`]).
        dims (`list[int]`, *optional*): sizes; default the model's `matryoshka_dimensions`. A size larger than the
            model's raises a `ValueError` naming it.
        output_folder (`str`, *optional*): MTEB's result cache folder: its JSON per task and size is written under
            `results/<model>/<revision>/experiments/embed_dim_<size>/`; None: nothing is written.
        overwrite_strategy (`str`): MTEB's, for results already in `output_folder`; default "always" (a model saved
            again under the same folder is evaluated again, not read from stale files).
        revision (`str`, *optional*): the model revision MTEB records (default: "no_revision_available").
        embedder_kwargs: `batch_size`, `max_length`, `device`, `show_progress_bar` (as for [`evaluate`]).

    Returns:
        [`MTEBReport`].
    """
    embedder = as_embedder(model, dims, **embedder_kwargs)
    tasks = resolve_tasks(tasks)
    result_cache = mteb.ResultCache(os.fspath(output_folder)) if output_folder is not None else None
    task_results = {dim: [] for dim in embedder.dims}
    rows, primary, task_types, eval_datasets, encoded = [], {}, {}, {}, {}
    for task in tasks:
        name = task.metadata.name
        load_task_data(task)
        cache = FullSizeCache(embedder)
        encode_kwargs = {"batch_size": embedder.batch_size or 32, "show_progress_bar": embedder.show_progress_bar}
        try:
            for dim in embedder.dims:
                encoder = MatryoshkaEncoder(embedder, dim, cache, revision)
                result = mteb.evaluate(
                    encoder, task, cache=result_cache, overwrite_strategy=overwrite_strategy, co2_tracker=False,
                    show_progress_bar=False, encode_kwargs=encode_kwargs,
                ).task_results[0]
                task_results[dim].append(result)
                rows.append({"model": embedder.name, "task": name, "metric": task.metadata.main_score, "dim": dim,
                             "value": result.get_score(), "max_length": embedder.max_length})
        finally:
            encoded[name] = cache.encoded
            cache.clear()
            task.unload_data()
        primary[name] = task.metadata.main_score
        if task.metadata.type in HUB_TASK_TYPES:
            task_types[name] = HUB_TASK_TYPES[task.metadata.type]
        hub_id = None if isinstance(task, LocalTask) else task.metadata.dataset["path"]
        eval_datasets[name] = {"name": name, "id": hub_id}
    rows = [row if row["max_length"] is not None else {k: v for k, v in row.items() if k != "max_length"}
            for row in rows]
    return MTEBReport(task_results, Results(rows, primary, task_types), eval_datasets, encoded)


def load_task_data(task):
    """Load a task's data once for all sizes (MTEB then reuses it), with a clear error when it is out of reach."""
    try:
        task.load_data()
    except (ConnectionError, OSError) as error:
        raise ConnectionError(
            f"{task.metadata.name}: its data ({task.metadata.dataset.get('path')}) could not be loaded from the Hub "
            f"({error}). {LOCAL_TASK_HELP}"
        ) from error


def resolve_tasks(tasks):
    """MTEB task objects from tasks, names or `NAME=PATH` strings, each checked to be a task type this encoder runs."""
    if isinstance(tasks, (str, mteb.AbsTask)):
        tasks = [tasks]
    tasks = [local_task(*task.split("=", 1)) if isinstance(task, str) and "=" in task else task for task in tasks]
    if not tasks:
        raise ValueError("No tasks given; pass e.g. mteb.get_tasks(['STSBenchmark']) or local_task(...).")
    resolved = []
    for task in tasks:
        if isinstance(task, str):
            task = registered_task(task)
        if not isinstance(task, mteb.AbsTask):
            raise TypeError(f"{task!r} is not an MTEB task; pass mteb tasks, task names, or NAME=PATH strings.")
        check_task_type(task)
        resolved.append(task)
    names = [task.metadata.name for task in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"Task names must be distinct (they name the result rows); got {names}.")
    return resolved


def registered_task(name):
    """The registered MTEB task `name`, with a clear error (close names, and how to work offline) when unknown."""
    try:
        return mteb.get_task(name)
    except KeyError as error:
        raise ValueError(f"Unknown MTEB task {name!r} ({error.args[0]}). {LOCAL_TASK_HELP}") from None


def check_task_type(task):
    kind, modalities = task.metadata.type, list(task.metadata.modalities)
    if kind not in SUPPORTED_TASK_TYPES or modalities != ["text"]:
        raise ValueError(
            f"{task.metadata.name} is an MTEB {kind} task on {modalities}; evaluate_mteb runs text tasks of the "
            f"types {', '.join(SUPPORTED_TASK_TYPES)}."
        )


class LocalTask:
    """Marks MTEB tasks built by [`local_task`] (their data is local; the Hub dataset id does not apply)."""

    local_data = None

    def load_data(self, num_proc=None, **kwargs):
        if self.data_loaded:
            return
        split = self.metadata.eval_splits[0]
        if self.metadata.type == "STS":
            first, second = self.column_names
            sentences1, sentences2, scores = self.local_data
            table = {first: list(sentences1), second: list(sentences2), "score": [float(s) for s in scores]}
            self.dataset = {"default": datasets.DatasetDict({split: datasets.Dataset.from_dict(table)})}
        else:
            corpus, queries, qrels = self.local_data
            queries = {q: text for q, text in queries.items() if q in qrels}
            self.dataset = {"default": {split: {
                "corpus": datasets.Dataset.from_dict({"id": list(corpus), "text": list(corpus.values())}),
                "queries": datasets.Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
                "relevant_docs": {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()},
                "top_ranked": None,
            }}}
        self.data_loaded = True


def local_task(name, data, split="test"):
    """An MTEB task (STS or retrieval) from local data, through MTEB's own task classes.

    Args:
        name (`str`): a registered MTEB task of the data's type (e.g. "STSBenchmark", "SciFact": its class, main
            score and settings are kept, so the scores are that task's on these data), or a new name (a plain
            `AbsTaskSTS` / `AbsTaskRetrieval` task reporting `cosine_spearman` / `ndcg_at_10`).
        data: a TSV path with `sentence1, sentence2, score` or `(sentences1, sentences2, scores)` for STS; a BEIR
            folder or `(corpus, queries, qrels)` dicts (as `mrl_text.data.load_beir` returns) for retrieval.
        split (`str`): the split name MTEB records (and the BEIR qrels file read).
    """
    from ..data import load_beir, load_sts

    source = None
    if isinstance(data, (str, os.PathLike)):
        source = Path(data)
        if source.is_dir():
            data = load_beir(source, split)
        elif source.is_file():
            data = load_sts(source)
        else:
            raise FileNotFoundError(f"{source}: no such file or folder for task {name!r}. {LOCAL_TASK_HELP}")
    if not isinstance(data, (tuple, list)) or len(data) != 3:
        raise TypeError(f"{name}: data must be a path, (sentences1, sentences2, scores) or (corpus, queries, qrels).")
    kind = "Retrieval" if isinstance(data[0], dict) else "STS"
    if kind == "STS" and not len(data[0]) == len(data[1]) == len(data[2]):
        raise ValueError(f"{name}: sentences1, sentences2 and scores differ in length.")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    dataset = {"path": os.fspath(source) if source else f"local/{name}", "revision": f"local-{digest}"}
    try:
        base = mteb.get_task(name)
    except KeyError:
        base = None
    if base is not None:
        if base.metadata.type != kind or base.metadata.is_multilingual:
            raise ValueError(
                f"{name} is a registered MTEB {base.metadata.type} task"
                f"{' with several subsets' if base.metadata.is_multilingual else ''}; these data make a monolingual "
                f"{kind} task: pick another name for a new task, or data of that type."
            )
        task_class = type(base)
        # MTEB's "superseded" notice is about its Hub copy of the data, not these files
        metadata = base.metadata.model_copy(update={"dataset": dataset, "eval_splits": [split], "superseded_by": None})
    else:
        task_class = AbsTaskSTS if kind == "STS" else AbsTaskRetrieval
        metadata = mteb.TaskMetadata(
            name=name, description=f"{kind} task built from local data ({dataset['path']}).", type=kind,
            modalities=["text"], category="t2t", eval_splits=[split], eval_langs=["eng-Latn"],
            main_score=LOCAL_TASK_TYPES[kind], dataset=dataset,
        )
    # A subclass per task: MTEB reads `metadata` from the class; `load_data` fills `dataset` from the local data.
    local_class = type(f"Local{task_class.__name__}", (LocalTask, task_class), {"metadata": metadata,
                                                                               "local_data": tuple(data)})
    return local_class()


__all__ = [
    "FullSizeCache",
    "HUB_TASK_TYPES",
    "LOCAL_TASK_TYPES",
    "MTEBReport",
    "MatryoshkaEncoder",
    "SUPPORTED_TASK_TYPES",
    "evaluate_mteb",
    "local_task",
    "model_meta",
    "resolve_tasks",
]
