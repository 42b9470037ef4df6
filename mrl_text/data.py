"""Data loading: hub ids and local files into the column layouts the trainer and the evaluators read.

Every entry point (training scripts, the CLI, evaluations) reads data through this module, so a file or a Hub id
means the same columns everywhere.
"""

import math
from pathlib import Path

TABLE_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}



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
    try:
        dataset = load_dataset(kind, data_files=str(path), split="train", **kwargs)
    except Exception:  # datasets wraps a decoding error in its own, which names neither the file nor the line
        not_utf8 = utf8_error(path) if kind != "parquet" else None
        if not_utf8 is not None:
            raise not_utf8 from None
        raise
    if len(dataset) == 0:
        raise ValueError(f"{path}: the file has no rows.")
    if columns:
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; expected {list(columns)}, found {dataset.column_names}."
            )
    return dataset


def utf8_error(path):
    """A `ValueError` naming the first line of the text file `path` that is not UTF-8, and how to re-encode it; None
    when every line decodes."""
    path = Path(path)
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return ValueError(
                    f"{path}, line {number}: not UTF-8 text (byte {line[error.start]:#04x} at byte {error.start + 1} "
                    "of the line; Latin-1 or Windows-1252?); re-encode the file as UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`."
                )
    return None


def row_place(path, row):
    """Where data row `row` (0-based) of a table file is, as a user finds it: its line in a text file (after the
    header of a csv/tsv), else its row number."""
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return f"line {row + 2}"
    return f"line {row + 1}" if suffix == ".jsonl" else f"row {row + 1}"


# evaluation data


def load_sts(path):
    """Read an STS table (columns `sentence1`, `sentence2`, `score`) -> `(sentences1, sentences2, scores)`."""
    table = read_table(path, ["sentence1", "sentence2", "score"])
    scores = []
    for row, value in enumerate(table["score"]):
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if math.isnan(score):
            shown = "empty or not a number ('n/a' and 'NA' read as missing)" if value is None else f"{value!r}"
            raise ValueError(f"{path}, {row_place(path, row)}: score is {shown}; every pair needs a numeric gold "
                             "similarity (e.g. 0-5): fill it in or drop the row.")
        scores.append(score)
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
                raise ValueError(
                    f"{path}, line {line}: score {row['score']!r} is not a number; expected {columns}."
                ) from None
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
            f"{directory}: no such folder (expected a BEIR folder with corpus.jsonl, queries.jsonl, "
            f"qrels/{split}.tsv)."
        )
    corpus = _read_jsonl_texts(directory / "corpus.jsonl", with_title=True)
    all_queries = _read_jsonl_texts(directory / "queries.jsonl", with_title=False)
    qrels_path = directory / "qrels" / f"{split}.tsv"
    qrels = _read_qrels(qrels_path)
    unknown_queries = sorted(q for q in qrels if q not in all_queries)
    unknown_docs = sorted({d for docs in qrels.values() for d in docs if d not in corpus})
    for kind, ids, source in (
        ("queries", unknown_queries, "queries.jsonl"),
        ("documents", unknown_docs, "corpus.jsonl"),
    ):
        if ids:
            raise ValueError(
                f"{qrels_path}: qrels name {len(ids)} {kind} missing from {directory / source}: {ids[:10]}"
                f"{' ...' if len(ids) > 10 else ''}."
            )
    queries = {q: all_queries[q] for q in qrels}
    return corpus, queries, qrels


DISJOINT_DROPS = ("train", "test")


def disjoint_qrels(train_qrels, test_qrels, drop="train"):
    """Two qrels splits with no relevant document in common: a method trained on the first split's
    (query, relevant document) pairs then cannot be scored on documents it was shown as answers.

    BEIR splits can share relevant documents (on SciFact, 181 of the 283 documents relevant to a test query are also
    relevant to a training query), so supervision on the training split can teach the test answers themselves.

    Args:
        train_qrels, test_qrels (`dict`): `{query_id: {doc_id: relevance}}` (relevance > 0 counts as relevant), e.g.
            from `load_beir`.
        drop (`str`): `"train"` (default) removes every training query with a relevant document that is relevant to
            a test query, so all test queries stay comparable with the standard split; `"test"` keeps the training
            split and removes every such test query instead.

    Returns:
        `(train_qrels, test_qrels)`: new dicts, the other split unchanged; queries keep all their judgements.
    """
    if drop not in DISJOINT_DROPS:
        raise ValueError(f"drop={drop!r}: use 'train' (drop training queries) or 'test' (drop test queries).")

    def relevant(qrels):
        return {q: {d for d, r in docs.items() if r > 0} for q, docs in qrels.items()}

    train_relevant, test_relevant = relevant(train_qrels), relevant(test_qrels)
    if drop == "train":
        shared = set().union(*test_relevant.values())
        kept = {q: dict(train_qrels[q]) for q, docs in train_relevant.items() if not docs & shared}
        return kept, {q: dict(docs) for q, docs in test_qrels.items()}
    shared = set().union(*train_relevant.values())
    kept = {q: dict(test_qrels[q]) for q, docs in test_relevant.items() if not docs & shared}
    return {q: dict(docs) for q, docs in train_qrels.items()}, kept


__all__ = ["disjoint_qrels", "load_beir", "load_classification", "load_sts", "read_table"]


# training data
#
# Loaders return `datasets.Dataset`s in the column layouts `MatryoshkaTrainer` reads:
#   pairs (anchor, positive), triplets (anchor, positive, negative), scored pairs (sentence1, sentence2, score),
#   labelled text (text, label). Each takes a hub id or a local table and the source's column names.

TRAINING_LAYOUTS = {
    "pairs": ("anchor", "positive"),
    "triplets": ("anchor", "positive", "negative"),
    "scored_pairs": ("sentence1", "sentence2", "score"),
    "labelled_text": ("text", "label"),
}

NLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}  # the ids Hugging Face's SNLI/MNLI use


def load_source(source, split="train", subset=None):
    """A local table (csv/tsv/jsonl/parquet, via `read_table`) or a hub dataset id -> `datasets.Dataset`.

    Args:
        source: a file path, or a hub id such as `"sentence-transformers/all-nli"` (needs network or a cache).
        split (`str`): the hub split to load (ignored for files).
        subset (`str`, *optional*): the hub configuration, e.g. `"triplet"` for all-nli.
    """
    path = Path(source)
    if path.suffix.lower() in TABLE_SUFFIXES or path.exists():
        return read_table(path)
    from datasets import load_dataset

    try:
        return load_dataset(str(source), subset, split=split)
    except Exception as error:  # the hub's errors vary by cause (offline, unknown id, unknown split)
        raise ValueError(
            f"Could not load {source!r} (split {split!r}{f', subset {subset!r}' if subset else ''}) as a local file "
            f"or a hub dataset: {error}"
        ) from error


def load_training_data(source, layout, columns=None, split="train", subset=None, limit=None):
    """Load `source` into a training layout: the named columns, renamed and in the layout's order.

    Args:
        source: a local table or a hub id (see `load_source`), or a `datasets.Dataset` already loaded.
        layout (`str`): one of `pairs`, `triplets`, `scored_pairs`, `labelled_text` (see `TRAINING_LAYOUTS`).
        columns (`dict[str, str]`, *optional*): layout column -> source column, e.g.
            `{"anchor": "question", "positive": "answer"}`; unnamed layout columns are read under their own name.
        split, subset: hub split and configuration.
        limit (`int`, *optional*): keep the first `limit` rows.

    Rows with a missing value are dropped; scores become floats; string labels become class ids (sorted names,
    kept as a `ClassLabel` feature). Missing columns or no rows left give a `ValueError` naming them.
    """
    if layout not in TRAINING_LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {', '.join(TRAINING_LAYOUTS)}.")
    targets = TRAINING_LAYOUTS[layout]
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(targets))
    if unknown:
        raise ValueError(f"columns names {unknown}, which layout {layout!r} does not have; it has {list(targets)}.")
    dataset = source if hasattr(source, "column_names") else load_source(source, split, subset)
    wanted = [columns.get(target, target) for target in targets]
    missing = [c for c in wanted if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source if isinstance(source, (str, Path)) else 'dataset'}: missing column(s) {missing} for layout "
            f"{layout!r}; found {dataset.column_names}. Map them with columns={{layout column: source column}}."
        )
    dataset = dataset.select_columns(wanted)
    for target, name in zip(targets, wanted):
        if target != name:
            dataset = dataset.rename_column(name, target)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    dataset = dataset.filter(lambda row: all(row[c] is not None and row[c] != "" for c in targets))
    if len(dataset) == 0:
        raise ValueError(f"{source!r}: no rows with every column of {list(targets)} filled.")
    if layout == "scored_pairs":
        from datasets import Value

        try:
            dataset = dataset.cast_column("score", Value("float64"))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source!r}: the score column must hold numbers; {error}") from None
    if layout == "labelled_text" and isinstance(dataset[0]["label"], str):
        dataset = dataset.class_encode_column("label")
    return dataset


def load_pairs(source, anchor="anchor", positive="positive", **kwargs):
    """(anchor, positive) pairs, e.g. question/answer or paraphrases; `kwargs` as in `load_training_data`."""
    return load_training_data(source, "pairs", {"anchor": anchor, "positive": positive}, **kwargs)


def load_triplets(source, anchor="anchor", positive="positive", negative="negative", **kwargs):
    """(anchor, positive, negative) triplets; the negative is a hard negative for InfoNCE."""
    return load_training_data(
        source, "triplets", {"anchor": anchor, "positive": positive, "negative": negative}, **kwargs
    )


def load_scored_pairs(source, sentence1="sentence1", sentence2="sentence2", score="score", **kwargs):
    """(sentence1, sentence2, score) pairs for CoSENT; any score scale (only the order matters)."""
    return load_training_data(
        source, "scored_pairs", {"sentence1": sentence1, "sentence2": sentence2, "score": score}, **kwargs
    )


def load_labelled_text(source, text="text", label="label", **kwargs):
    """(text, label) rows for the nested classification heads; string labels become class ids."""
    return load_training_data(source, "labelled_text", {"text": text, "label": label}, **kwargs)


def _nli_label(value):
    """`entailment`/`neutral`/`contradiction` (any case) or 0/1/2 -> that id; anything else (-1, '-') -> None."""
    if isinstance(value, str):
        return NLI_LABELS.get(value.strip().lower())
    return int(value) if value in (0, 1, 2) else None


def nli_triplets(dataset, premise="premise", hypothesis="hypothesis", label="label"):
    """AllNLI-style triplets from NLI rows: (anchor=premise, positive=entailed hypothesis, negative=contradiction).

    Every premise with at least one entailed and one contradicting hypothesis gives one triplet per entailed
    hypothesis, paired with its contradictions in turn. Labels may be names (`entailment`, `neutral`,
    `contradiction`) or Hugging Face ids (0, 1, 2); other labels (-1, '-') are skipped.

    Args:
        dataset: a `datasets.Dataset` (or a local table / hub id, loaded with `load_source`).
        premise, hypothesis, label (`str`): the source's column names.
    """
    from datasets import Dataset

    if not hasattr(dataset, "column_names"):
        dataset = load_source(dataset)
    missing = [c for c in (premise, hypothesis, label) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"NLI data lacks column(s) {missing}; found {dataset.column_names}. Pass premise=/hypothesis=/label=."
        )
    by_premise = {}  # premise -> ([entailed], [contradicting]), in first-seen order
    for p, h, y in zip(dataset[premise], dataset[hypothesis], dataset[label]):
        y = _nli_label(y)
        if not p or not h or y not in (0, 2):
            continue
        by_premise.setdefault(p, ([], []))[0 if y == 0 else 1].append(h)
    rows = {"anchor": [], "positive": [], "negative": []}
    for p, (entailed, contradicting) in by_premise.items():
        if not contradicting:
            continue
        for i, h in enumerate(entailed):
            rows["anchor"].append(p)
            rows["positive"].append(h)
            rows["negative"].append(contradicting[i % len(contradicting)])
    if not rows["anchor"]:
        raise ValueError(
            "No premise has both an entailed and a contradicting hypothesis; check the label column "
            f"({label!r}: names entailment/neutral/contradiction or ids 0/1/2)."
        )
    return Dataset.from_dict(rows)


__all__ += [
    "TRAINING_LAYOUTS",
    "load_labelled_text",
    "load_pairs",
    "load_scored_pairs",
    "load_source",
    "load_training_data",
    "load_triplets",
    "nli_triplets",
]


# --- Image-text (dual encoders) ---------------------------------------------------------------------------------

def load_image_captions(dataset, split="train", image_column="image", caption_column="caption", limit=None):
    """An image-caption dataset from the Hub or a local `datasets` folder, as a `datasets.Dataset` with columns
    `image` (PIL) and `caption` (str; the first caption when a row holds a list).

    Raises a `ValueError` naming the columns the dataset has when `image_column` or `caption_column` is missing.
    """
    from datasets import load_dataset, load_from_disk

    data = load_from_disk(dataset)[split] if Path(dataset).is_dir() else load_dataset(dataset, split=split)
    missing = [c for c in (image_column, caption_column) if c not in data.column_names]
    if missing:
        raise ValueError(
            f"{dataset} ({split}) has no column(s) {missing}; its columns are {data.column_names}. Pass "
            "image_column= / caption_column= naming the image and caption columns."
        )
    if limit is not None:
        data = data.select(range(min(int(limit), len(data))))

    def first_caption(row):
        caption = row[caption_column]
        return {"caption": caption[0] if isinstance(caption, (list, tuple)) else str(caption)}

    data = data.map(first_caption)
    keep = {image_column, "caption"}
    data = data.remove_columns([c for c in data.column_names if c not in keep])
    return data.rename_column(image_column, "image") if image_column != "image" else data


__all__ += ["load_image_captions"]
