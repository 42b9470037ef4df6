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


__all__ = ["read_table", "shared_data_dir"]


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
