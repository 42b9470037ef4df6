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
