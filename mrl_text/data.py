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
        raise ValueError(f"NLI data lacks column(s) {missing}; found {dataset.column_names}. Pass premise=/hypothesis=/label=.")
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


def chatterbot_pairs(language="english"):
    """The offline demo's real data: question/answer pairs from the `chatterbot-corpus` PyPI package.

    Each conversation's first turn is the question and its second the answer. Questions that repeat (the corpus
    lists some with many alternative answers) keep their first answer, and repeated answers their first question,
    so every in-batch negative is a true negative and every held-out question has one right answer.

    Returns a `datasets.Dataset` with columns (anchor, positive) and the topic of each pair in `category`
    (drop it before training: `select_columns(["anchor", "positive"])`).
    """
    import yaml
    from datasets import Dataset

    try:
        import chatterbot_corpus
    except ImportError:
        raise ImportError(
            "The demo data comes from the chatterbot-corpus package: pip install 'mrl-text[demo]'."
        ) from None
    folder = Path(chatterbot_corpus.__file__).parent / "data" / language
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: chatterbot-corpus has no language {language!r}.")
    rows = {"anchor": [], "positive": [], "category": []}
    seen_questions, seen_answers = set(), set()
    for path in sorted(folder.glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            if len(conversation) < 2:
                continue
            question, answer = str(conversation[0]).strip(), str(conversation[1]).strip()
            if not question or not answer or question in seen_questions or answer in seen_answers:
                continue
            seen_questions.add(question)
            seen_answers.add(answer)
            rows["anchor"].append(question)
            rows["positive"].append(answer)
            rows["category"].append(path.stem)
    if not rows["anchor"]:
        raise ValueError(f"{folder}: no question/answer pairs found.")
    return Dataset.from_dict(rows)


__all__ += [
    "TRAINING_LAYOUTS",
    "chatterbot_pairs",
    "load_labelled_text",
    "load_pairs",
    "load_scored_pairs",
    "load_source",
    "load_training_data",
    "load_triplets",
    "nli_triplets",
]


# --- Image-text (dual encoders) ---------------------------------------------------------------------------------

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Captions are made from the class labels: the offline demo has real images but no human captions.
DIGIT_TRAIN_TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.", "a small picture of the number {}.")
# Held out of training: zero-shot prompts and retrieval captions use wordings the model never saw.
DIGIT_EVAL_TEMPLATES = ("an image of the digit {}.", "a scan of a handwritten {}.")


def load_digits_image_text(test_fraction=0.2, seed=0):
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images, offline) with captions from labels.

    Each training image gets one caption, a training template filled with its class name ("a handwritten three.").
    Pixels are scaled from 0..16 to -1..1. The split is stratified and fixed by `seed`.

    Returns:
        `dict` with `train` and `test` (each `{"pixel_values": FloatTensor (n, 1, 8, 8), "labels": list[int],
        "captions": list[str]}`), `class_names` and the held-out `eval_templates` for zero-shot prompts.
    """
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r} must be between 0 and 1 (e.g. 0.2).")
    digits = load_digits()
    pixels = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = digits.target.tolist()
    train_rows, test_rows = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    rng = np.random.default_rng(seed)
    splits = {}
    for split, rows, templates in (
        ("train", train_rows, DIGIT_TRAIN_TEMPLATES),
        ("test", test_rows, DIGIT_EVAL_TEMPLATES),
    ):
        split_labels = [labels[i] for i in rows]
        choice = rng.integers(len(templates), size=len(rows))
        splits[split] = {
            "pixel_values": pixels[torch.as_tensor(rows)],
            "labels": split_labels,
            "captions": [templates[t].format(DIGIT_NAMES[y]) for t, y in zip(choice, split_labels)],
        }
    return {**splits, "class_names": list(DIGIT_NAMES), "eval_templates": list(DIGIT_EVAL_TEMPLATES)}


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
            "image_column= / caption_column= (in the recipe: `image_column:` / `caption_column:`)."
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


__all__ += ["DIGIT_NAMES", "load_digits_image_text", "load_image_captions"]


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
