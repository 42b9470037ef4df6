"""Training-data loaders: local tables into the trainer's layouts, NLI triplets; the demo data of
recipes/demo_data.py."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from datasets import Dataset

from mrl_text.data import (
    load_labelled_text,
    load_pairs,
    load_scored_pairs,
    load_training_data,
    load_triplets,
    nli_triplets,
)

from .conftest import SHARED_DATA

# The development data helpers live with the recipes, not in mrl_text (conftest puts recipes/ on sys.path).
from demo_data import DIGIT_NAMES, chatterbot_pairs, load_digits_image_text

ROOT = Path(__file__).resolve().parents[1]

QA = {
    "question": ["what is ai?", "who are you?", "hello"],
    "answer": ["a field of study", "a bot", "hi"],
    "id": [1, 2, 3],
}


def write(tmp_path, name, table):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        rows = [dict(zip(table, values)) for values in zip(*table.values())]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".parquet"):
        Dataset.from_dict(table).to_parquet(str(path))
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        lines = [sep.join(table)] + [sep.join(str(v) for v in values) for values in zip(*table.values())]
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", ["qa.csv", "qa.tsv", "qa.jsonl", "qa.parquet"])
def test_pairs_from_every_file_type_with_column_mapping(tmp_path, name):
    pairs = load_pairs(write(tmp_path, name, QA), anchor="question", positive="answer")
    assert pairs.column_names == ["anchor", "positive"]
    assert pairs["anchor"] == QA["question"] and pairs["positive"] == QA["answer"]


def test_triplets_scored_pairs_and_labelled_text(tmp_path):
    triplets = load_triplets(
        Dataset.from_dict({"q": ["a"], "p": ["b"], "n": ["c"]}), anchor="q", positive="p", negative="n"
    )
    assert triplets[0] == {"anchor": "a", "positive": "b", "negative": "c"}
    scored = load_scored_pairs(write(tmp_path, "s.tsv", {"s1": ["a", "b"], "s2": ["c", "d"], "sim": [4, 1]}),
                               sentence1="s1", sentence2="s2", score="sim")
    assert scored.column_names == ["sentence1", "sentence2", "score"] and scored["score"] == [4.0, 1.0]
    labelled = load_labelled_text(Dataset.from_dict({"text": ["x", "y", "z"], "intent": ["pay", "card", "pay"]}),
                                  label="intent")
    assert labelled["label"] == [1, 0, 1]  # sorted names: card=0, pay=1
    assert labelled.features["label"].names == ["card", "pay"]


def test_missing_columns_empty_data_and_bad_layout(tmp_path):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['positive'\].*found \['question', 'answer', 'id'\]"):
        load_pairs(write(tmp_path, "qa.csv", QA), anchor="question")
    with pytest.raises(ValueError, match="no rows with every column"):
        load_pairs(Dataset.from_dict({"anchor": ["a", None], "positive": [None, "b"]}))
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        load_pairs(tmp_path / "nope.tsv")
    with pytest.raises(ValueError, match="Unknown layout 'quads'"):
        load_training_data(Dataset.from_dict(QA), "quads")
    with pytest.raises(ValueError, match="score column must hold numbers"):
        load_scored_pairs(Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "score": ["high"]}))


@pytest.mark.parametrize(
    "labels", [["entailment", "contradiction", "neutral", "Entailment", "contradiction"], [0, 2, 1, 0, 2]]
)
def test_nli_triplets(labels):
    rows = Dataset.from_dict({
        "premise": ["p1", "p1", "p1", "p2", "p2"],
        "hypothesis": ["yes1", "no1", "maybe", "yes2", "no2"],
        "label": labels,
    })
    triplets = nli_triplets(rows)
    assert triplets.to_list() == [
        {"anchor": "p1", "positive": "yes1", "negative": "no1"},
        {"anchor": "p2", "positive": "yes2", "negative": "no2"},
    ]


def test_a_file_that_is_not_utf8_names_its_line_and_how_to_re_encode(tmp_path):
    from mrl_text.adaptor import read_corpus, read_pairs
    from mrl_text.data import read_table

    for name, text in (("corpus.txt", "hello\ncafé au lait\n"), ("corpus.tsv", "text\nhello\ncafé au lait\n"),
                       ("pairs.tsv", "hello\tworld\ncafé\tau lait\n")):
        (tmp_path / name).write_bytes(text.encode("latin-1"))
        line = 3 if name == "corpus.tsv" else 2
        expected = rf"{name}, line {line}: not UTF-8 text \(byte 0xe9.*re-encode the file as UTF-8"
        with pytest.raises(ValueError, match=expected):
            read_pairs(tmp_path / name) if name == "pairs.tsv" else read_corpus(tmp_path / name)
    with pytest.raises(ValueError, match=r"corpus.tsv, line 3: not UTF-8"):
        read_table(tmp_path / "corpus.tsv")


def test_an_sts_score_that_is_not_a_number_names_its_file_and_line(tmp_path):
    from mrl_text.data import load_sts

    rows = "sentence1\tsentence2\tscore\na man\ta woman\t3.0\nthe dog\tthe cat\t{}\n"
    for value, shown in (("n/a", "empty or not a number"), ("high", "'high'")):
        (tmp_path / "sts.tsv").write_text(rows.format(value))
        with pytest.raises(ValueError, match=rf"sts.tsv, line 3: score is {re.escape(shown)}.*fill it in or drop"):
            load_sts(tmp_path / "sts.tsv")
    (tmp_path / "sts.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "score": null}\n')
    with pytest.raises(ValueError, match=r"sts.jsonl, line 1: score is empty"):
        load_sts(tmp_path / "sts.jsonl")


def test_nli_triplets_errors():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['hypothesis'\]"):
        nli_triplets(Dataset.from_dict({"premise": ["p"], "label": [0]}))
    with pytest.raises(ValueError, match="No premise has both"):
        nli_triplets(Dataset.from_dict({"premise": ["p", "p"], "hypothesis": ["a", "b"], "label": [0, 1]}))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "snli").is_dir(), reason="../shared/data/snli is absent")
def test_nli_triplets_on_snli_dev():
    from mrl_text.data import load_source

    triplets = nli_triplets(load_source(SHARED_DATA / "snli" / "dev.tsv"))
    assert len(triplets) > 3000
    assert all(
        a != p and p != n
        for a, p, n in zip(triplets["anchor"][:100], triplets["positive"][:100], triplets["negative"][:100])
    )


@pytest.mark.slow
def test_chatterbot_pairs_are_unique_question_answer_pairs():
    pairs = chatterbot_pairs()
    assert len(pairs) > 500
    assert len(set(pairs["anchor"])) == len(pairs) == len(set(pairs["positive"]))
    assert {"trivia", "ai", "coding"} <= set(pairs["category"])
    with pytest.raises(FileNotFoundError, match="klingon"):
        chatterbot_pairs("klingon")


def test_digits_loader_makes_captions_from_labels():
    data = load_digits_image_text()
    train, test = data["train"], data["test"]
    assert train["pixel_values"].shape[1:] == (1, 8, 8) and len(train["labels"]) + len(test["labels"]) == 1797
    assert train["pixel_values"].min() >= -1 and train["pixel_values"].max() <= 1
    assert all(DIGIT_NAMES[y] in caption.split() or f"{DIGIT_NAMES[y]}." in caption.split()
               for y, caption in zip(train["labels"], train["captions"]))
    # zero-shot wordings are held out of training
    assert not {t.format("three") for t in data["eval_templates"]} & set(train["captions"])


def test_the_library_does_not_know_this_repository():
    """Development data paths and demo corpora belong to recipes, benchmarks and tests, never to mrl_text/; nor do
    the library's docstrings and comments cite the recipes or the benchmark results (a default's reason is said in a
    sentence; the study lives in benchmarks)."""
    patterns = [arg for pattern in ("shared_data_dir", "chatterbot", "shared/data", "benchmarks/", "recipes/")
                for arg in ("-e", pattern)]
    found = subprocess.run(
        ["grep", "-rn", "--exclude-dir=__pycache__", *patterns, str(ROOT / "mrl_text")],
        capture_output=True, text=True,
    )
    assert found.stdout == "", found.stdout
