"""Data loading: hub ids and local files into the column layouts the trainer and the evaluators read.

Every entry point (recipes, CLI, benchmarks) reads data through this module.
"""

import os
from pathlib import Path

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def shared_data_dir():
    """The development datasets folder: `$MRL_TEXT_DATA`, else `../shared/data` beside the repository.

    Returns a `Path` (which may not exist: callers that need it skip or fail with a clear message).
    """
    if os.environ.get("MRL_TEXT_DATA"):
        return Path(os.environ["MRL_TEXT_DATA"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def read_table(path, columns=None):
    """Read a local csv/tsv/jsonl/json/parquet file into a `datasets.Dataset`.

    Args:
        path: the file. Tab-separated for `.tsv` (and `.txt`), comma-separated for `.csv`; standard quoting.
        columns (`list[str]`, *optional*): columns that must be present; a clear error names the file, the
            missing columns and the columns it has.
    """
    from datasets import load_dataset

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a .tsv, .csv, .jsonl or .parquet table).")
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}.")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() in (".tsv", ".txt") else {}
    dataset = load_dataset(kind, data_files=str(path), split="train", **kwargs)
    if len(dataset) == 0:
        raise ValueError(f"{path}: the file has no rows.")
    if columns:
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {list(columns)}, found {dataset.column_names}.")
    return dataset


# evaluation data


def load_sts(path):
    """Read an STS table (columns `sentence1`, `sentence2`, `score`) -> `(sentences1, sentences2, scores)`."""
    table = read_table(path, ["sentence1", "sentence2", "score"])
    try:
        scores = [float(s) for s in table["score"]]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: column 'score' must hold numbers (gold similarity); {error}.") from None
    return [str(s) for s in table["sentence1"]], [str(s) for s in table["sentence2"]], scores


def load_classification(path, text_column="text", label_column="label"):
    """Read a classification table -> `(texts, labels)`; labels keep their type (names or ids)."""
    table = read_table(path, [text_column, label_column])
    return [str(t) for t in table[text_column]], list(table[label_column])


def _read_jsonl_texts(path, with_title):
    """`{_id: text}` from a BEIR corpus.jsonl / queries.jsonl; corpus text is `title + " " + text`."""
    table = read_table(path, ["_id", "text"])
    titles = table["title"] if with_title and "title" in table.column_names else [None] * len(table)
    texts = {}
    for doc_id, title, text in zip(table["_id"], titles, table["text"]):
        text = text or ""
        texts[str(doc_id)] = f"{title} {text}".strip() if title else text
    return texts


def _read_qrels(path):
    """`{query_id: {doc_id: relevance}}` from a BEIR qrels tsv (query-id, corpus-id, score).

    Read with the csv module rather than `read_table`: ids must stay strings ("007" is not 7).
    """
    import csv

    columns = ["query-id", "corpus-id", "score"]
    read_table(path, columns)  # existence, type and column checks with the project's messages
    qrels = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle, delimiter="\t"), start=2):
            try:
                relevance = int(float(row["score"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: score {row['score']!r} is not a number; expected {columns}.") from None
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = relevance
    return qrels


def load_beir(directory, split="test"):
    """Read a BEIR retrieval folder: `corpus.jsonl` (_id, title, text), `queries.jsonl` (_id, text) and
    `qrels/<split>.tsv` (query-id, corpus-id, score).

    Returns:
        `(corpus, queries, qrels)`: `{doc_id: text}`, `{query_id: text}` for the queries that have qrels only, and
        `{query_id: {doc_id: relevance}}`. Qrels naming a document or query absent from the folder raise a
        `ValueError` naming the file and the ids.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: no such folder (expected a BEIR folder with corpus.jsonl, queries.jsonl, qrels/{split}.tsv)."
        )
    corpus = _read_jsonl_texts(directory / "corpus.jsonl", with_title=True)
    all_queries = _read_jsonl_texts(directory / "queries.jsonl", with_title=False)
    qrels_path = directory / "qrels" / f"{split}.tsv"
    qrels = _read_qrels(qrels_path)
    unknown_queries = sorted(q for q in qrels if q not in all_queries)
    unknown_docs = sorted({d for docs in qrels.values() for d in docs if d not in corpus})
    for kind, ids, source in (("queries", unknown_queries, "queries.jsonl"), ("documents", unknown_docs, "corpus.jsonl")):
        if ids:
            raise ValueError(
                f"{qrels_path}: qrels name {len(ids)} {kind} missing from {directory / source}: {ids[:10]}"
                f"{' ...' if len(ids) > 10 else ''}."
            )
    queries = {q: all_queries[q] for q in qrels}
    return corpus, queries, qrels


__all__ = ["load_beir", "load_classification", "load_sts", "read_table", "shared_data_dir"]


# --- Adaptive deployment (retrieval benchmarks): one large corpus of real sentences -------------------------------

# (folder, file, text columns) of every sentence-like text in the development data.
TEXT_CORPUS_SOURCES = (
    ("snli", ("dev.tsv", "test.tsv"), ("premise", "hypothesis")),
    ("flickr8k_captions", ("train.tsv", "dev.tsv", "test.tsv"), ("caption",)),
    ("emotion", ("train.tsv", "validation.tsv", "test.tsv"), ("text",)),
    ("banking77", ("train.tsv", "test.tsv"), ("text",)),
    ("mrpc", ("train.tsv", "test.tsv"), ("sentence1", "sentence2")),
    ("stsb", ("train.tsv", "dev.tsv", "test.tsv"), ("sentence1", "sentence2")),
    ("trec", ("train.tsv", "test.tsv"), ("text",)),
)


def _split_sentences(text):
    """Split an abstract into sentences at '.', '!' or '?' followed by a space and a capital letter or digit."""
    import re

    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(])", text) if s.strip()]


def load_text_corpus(data_dir=None, sources=None):
    """The union of every sentence in the development data, deduplicated: a real corpus of ~150k short texts.

    Sources: SNLI premises and hypotheses, Flickr8k captions, emotion, Banking77, MRPC, STS-B and TREC texts (all
    splits), and SciFact's titles, claims and abstracts split into sentences. Texts are stripped and exact
    duplicates dropped, keeping the first occurrence, in the order listed (deterministic).

    Args:
        data_dir: the development data folder (default `shared_data_dir()`).
        sources (`list[str]`, *optional*): the folders to read (e.g. all but "scifact"); default all of them.

    Returns:
        `(texts, counts)`: the list of unique texts and a dict source -> number of unique texts it added.
    """
    import json

    data_dir = Path(data_dir) if data_dir is not None else shared_data_dir()
    known = [folder for folder, _, _ in TEXT_CORPUS_SOURCES] + ["scifact"]
    sources = known if sources is None else list(sources)
    if not sources or any(s not in known for s in sources):
        raise ValueError(f"sources={sources!r}: choose among {known}.")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no development data folder; set $MRL_TEXT_DATA to the shared data.")
    seen, texts, counts = set(), [], {}

    def take(source, values):
        before = len(texts)
        for value in values:
            value = (value or "").strip()
            if value and value not in seen:
                seen.add(value)
                texts.append(value)
        counts[source] = counts.get(source, 0) + len(texts) - before

    for folder, files, columns in TEXT_CORPUS_SOURCES:
        if folder not in sources:
            continue
        for name in files:
            table = read_table(data_dir / folder / name, columns)
            for column in columns:
                take(folder, table[column])
    scifact = data_dir / "scifact"
    for name in ("corpus.jsonl", "queries.jsonl") if "scifact" in sources else ():
        path = scifact / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing SciFact file (BEIR layout: corpus.jsonl, queries.jsonl).")
        with open(path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                take("scifact", [record.get("title", "")] + _split_sentences(record.get("text", "")))
    return texts, counts


__all__ += ["load_text_corpus"]
