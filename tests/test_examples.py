"""The scripts in examples/ run end to end as a user runs them (a subprocess, offline), on tiny random models, and
write and print what they promise."""

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OFFLINE = {name: "1" for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                                    "HF_EVALUATE_OFFLINE")}
QUESTIONS = ["what is a dog", "who plays the guitar", "where is the park", "when does it rain", "how is the weather",
             "what is my balance", "who eats bread", "where is the bank", "why is the cat sad", "how fast is the car"]
ANSWERS = ["a dog is an animal", "the man plays the guitar", "the park is on the street", "it rains tomorrow",
           "the weather is lovely today", "your account balance is good", "the woman eats bread",
           "the bank is in the house", "the cat is sad today", "the car is fast"]

pytestmark = pytest.mark.slow


def run_example(script, *args, cwd):
    """Run examples/<script> with `args` in `cwd`, offline; its stdout (stderr shown when it fails)."""
    env = {**os.environ, **OFFLINE, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def table_rows(stdout, columns):
    """{size: [values]} of the printed per-size table rows with `columns` numbers after the size."""
    pattern = r"^\s*(\d+)" + r"\s+(-?\d+\.\d+)" * columns + r"\s*$"
    return {int(m[0]): [float(v) for v in m[1:]] for m in re.findall(pattern, stdout, flags=re.MULTILINE)}


def write_table(path, header, rows, delimiter):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def tiny_encoder(make_model, tmp_path):
    """A plain (not Matryoshka) tiny BERT folder with its tokenizer: what the training examples start from."""
    folder = tmp_path / "encoder"
    model = make_model()
    model.encoder.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_matryoshka(make_model, tmp_path):
    """A tiny MatryoshkaModel folder (sizes 32, 16, 8, 4) reading 32 tokens: what export and retrieval take."""
    folder = tmp_path / "matryoshka"
    make_model(max_seq_length=32).save_pretrained(folder)
    return folder


def test_train_matryoshka_pairs(tiny_encoder, tmp_path):
    from transformers import AutoModel

    pairs = write_table(tmp_path / "pairs.tsv", ["question", "answer"], zip(QUESTIONS, ANSWERS), "\t")
    out = tmp_path / "trained"
    stdout = run_example("train_matryoshka_pairs.py", "--model", tiny_encoder, "--data", pairs, "--anchor-column",
                         "question", "--positive-column", "answer", "--dims", 32, 16, 8, "--max-steps", 2,
                         "--batch-size", 4, "--max-seq-length", 32, "--output-dir", out, cwd=tmp_path)
    rows = table_rows(stdout, columns=2)  # size, nDCG@10 before, after
    assert sorted(rows) == [8, 16, 32] and all(0 <= v <= 100 for values in rows.values() for v in values)
    assert "2 anchors among 10 positives" in stdout
    assert "heldout" in (out / "README.md").read_text()  # the card records the evaluation
    model = AutoModel.from_pretrained(out)
    assert model.config.matryoshka_dimensions == [32, 16, 8]
    assert tuple(model.encode("a dog", dim=8).shape) == (8,)


def test_train_classifier_nested_heads(tiny_encoder, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    labels = ["animal", "music", "place", "weather", "money"] * 2
    train = write_table(tmp_path / "train.csv", ["sentence", "topic"], zip(QUESTIONS + ANSWERS, labels * 2), ",")
    # Another order of first appearance and one class missing: class ids must follow the training file's numbering.
    test = write_table(tmp_path / "test.csv", ["sentence", "topic"], [("the dog", "animal"), ("rain", "weather"),
                                                                      ("a song", "music")][::-1], ",")
    out = tmp_path / "classifier"
    stdout = run_example("train_classifier_nested_heads.py", "--model", tiny_encoder, "--data", train, "--test-data",
                         test, "--text-column", "sentence", "--label-column", "topic", "--dims", 32, 16, 8,
                         "--max-steps", 2, "--batch-size", 4, "--max-seq-length", 32, "--output-dir", out,
                         cwd=tmp_path)
    rows = table_rows(stdout, columns=1)  # size, accuracy
    assert sorted(rows) == [8, 16, 32] and all(0 <= values[0] <= 100 for values in rows.values())
    assert "20 training and 3 test rows, 5 classes" in stdout
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert sorted(model.config.id2label.values()) == sorted(set(labels))
    with torch.inference_mode():
        logits = model(**model.tokenizer(["the dog"], return_tensors="pt"), dim=8).logits
    assert logits.shape == (1, 5)


def test_adaptor_finished_model(tiny_encoder, tmp_path):
    pytest.importorskip("chatterbot_corpus", reason="the default corpus comes from the demo extra")
    from transformers import AutoModel

    out = tmp_path / "adapted"
    stdout = run_example("adaptor_finished_model.py", "--model", tiny_encoder, "--dims", 32, 16, 8, "--epochs", 1,
                         "--max-seq-length", 32, "--output-dir", out, cwd=tmp_path)
    assert "texts to fit on" in stdout and "truncation" in stdout
    assert re.search(r"^\s+8\s+[\d.]+\s+[\d.]+.*(adaptor|plain truncation)$", stdout, flags=re.MULTILINE)
    assert "encode(text, dim=8) gives (8,)" in stdout
    model = AutoModel.from_pretrained(out)
    assert model.adaptor is not None and model.config.matryoshka_dimensions == [32, 16, 8]


@pytest.mark.parametrize("export_format", ["sentence-transformers", "onnx"])
def test_export_and_serve(tiny_matryoshka, tmp_path, export_format):
    if export_format == "onnx":
        missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
        if missing:
            pytest.skip(f"ONNX export needs {' and '.join(missing)} (pip install 'mrl-text[export]')")
    out = tmp_path / "exported"
    stdout = run_example("export_and_serve.py", "--model", tiny_matryoshka, "--dim", 16, "--format", export_format,
                         "--output-dir", out, cwd=tmp_path)
    assert json.loads((out / "config_sentence_transformers.json").read_text())["truncate_dim"] == 16
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"  # a standard folder
    differences = dict(re.findall(r"^(\S+): embeddings \(3, 16\), largest difference .*: (\S+)$", stdout,
                                  flags=re.MULTILINE))
    served_by = ["sentence-transformers"] + (["onnxruntime"] if export_format == "onnx" else [])
    assert sorted(differences) == sorted(served_by)
    assert all(float(value) < 1e-5 for value in differences.values())
    assert (out / "onnx" / "model.onnx").is_file() == (export_format == "onnx")


def test_funnel_retrieval(tiny_matryoshka, tmp_path):
    from mrl_text import FunnelIndex

    corpus = tmp_path / "corpus.txt"
    texts = [f"{answer} {word}".strip() for word in ("", "today", "please", "thanks") for answer in ANSWERS]
    corpus.write_text("\n".join(texts) + "\n")
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(QUESTIONS) + "\n")
    stdout = run_example("funnel_retrieval.py", "--model", tiny_matryoshka, "--corpus", corpus, "--queries", queries,
                         "--stages", "8:20", "32:5", "--k", 5, "--save-index", tmp_path / "index", cwd=tmp_path)
    assert "10 queries over 40 texts" in stdout
    recalls = dict(re.findall(r"^(exact, 32 dims|funnel 8d:20 -> 32d:5|exact, 8 dims alone)\s+(\d\.\d+)", stdout,
                              flags=re.MULTILINE))
    assert float(recalls["exact, 32 dims"]) == 1.0
    assert 0 <= float(recalls["exact, 8 dims alone"]) <= float(recalls["funnel 8d:20 -> 32d:5"]) <= 1
    index = FunnelIndex.load(tmp_path / "index")
    assert len(index) == 40 and index.stages == [(8, 20), (32, 5)]
