"""Development and demo data for the recipes, benchmarks and tests of this repository (not part of the library).

- `shared_data_dir()`: the development datasets folder (`$MRL_TEXT_DATA`, else `../shared/data` beside the repository).
- `chatterbot_pairs()`: the offline text demo's question/answer pairs (the chatterbot-corpus package).
- `load_digits_image_text()`: the offline image-text demo's digits with captions made from their labels.
- `load_text_corpus()`: every sentence of the development data, for the adaptive-retrieval benchmark.

Recipes import it as `demo_data` (a script's own folder is on `sys.path` when it runs); tests (tests/conftest.py) and
benchmarks (benchmarks/_report.py) put `recipes/` on `sys.path` once.
"""

import os
from pathlib import Path

from mrl_text.data import read_table

REPOSITORY = Path(__file__).resolve().parents[1]


def shared_data_dir():
    """The development datasets folder: `$MRL_TEXT_DATA`, else `../shared/data` beside the repository.

    Returns a `Path` (which may not exist: callers that need it skip or fail with a clear message).
    """
    if os.environ.get("MRL_TEXT_DATA"):
        return Path(os.environ["MRL_TEXT_DATA"])
    return REPOSITORY.parent / "shared" / "data"


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


# Image-text (dual encoders)

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


# A large corpus of real sentences for the adaptive-retrieval benchmark.

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
