import json
from pathlib import Path

import pytest
import tomllib
from huggingface_hub import ModelCard

from mrl_text.cards.card import PLOT_FILENAME
from mrl_text.cli import build_parser, main

from .conftest import build_tokenizer, tiny_bert_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path):
    """Tiny STS, BEIR and classification files in the layouts the CLI documents."""
    root = tmp_path / "data"
    (root / "stsb").mkdir(parents=True)
    pairs = [("a man is playing a guitar", "a man plays music", 4.0), ("the dog runs", "a cat is sleeping", 0.5),
             ("it is raining today", "the weather is bad", 3.0), ("what is my balance", "help with my account", 2.0)]
    (root / "stsb" / "test.tsv").write_text(
        "sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs)
    )
    beir = root / "scifact"
    (beir / "qrels").mkdir(parents=True)
    docs = ["the dog runs in the park", "a woman is eating bread", "music with a guitar", "the sun is lovely"]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs))
    )
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "dog park"}\n{"_id": "q2", "text": "guitar music"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td2\t1\n")
    (root / "intent").mkdir()
    rows = [
        ("hello there", "greet"),
        ("hello world", "greet"),
        ("thanks a lot", "thank"),
        ("thanks please", "thank"),
    ] * 3
    for split in ("train", "test"):
        (root / "intent" / f"{split}.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    return root


@pytest.fixture
def saved_models(make_model, tmp_path):
    model_dir, plain_dir = tmp_path / "model", tmp_path / "plain"
    make_model(max_seq_length=32).save_pretrained(model_dir)
    from transformers import BertModel

    tokenizer = build_tokenizer(plain_dir)
    BertModel(tiny_bert_config(vocab_size=len(tokenizer), hidden_size=16), add_pooling_layer=False).save_pretrained(
        plain_dir
    )
    tokenizer.save_pretrained(plain_dir)
    return model_dir, plain_dir


@pytest.mark.slow
def test_evaluate_writes_the_report(data, saved_models, tmp_path, capsys):
    model_dir, plain_dir = saved_models
    out = tmp_path / "report"
    argv = [
        "evaluate", str(model_dir), "--sts", str(data / "stsb" / "test.tsv"), "--retrieval", str(data / "scifact"),
        "--classification", str(data / "intent" / "train.tsv"), str(data / "intent" / "test.tsv"),
        "--baseline", str(plain_dir), "--max-length", "32", "--out", str(out),
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.png"]
    rows = json.loads((out / "results.json").read_text())["rows"]
    # a local folder is named as configs and cards name it (portable_name), never by this machine's path
    assert {r["model"] for r in rows} == {"model", "plain"}
    model_cells = {(r["task"], r["metric"], r["dim"]) for r in rows if r["model"] == "model"}
    assert ("stsb", "spearman", 4) in model_cells and ("scifact", "ndcg@10", 32) in model_cells
    assert ("intent", "accuracy", 8) in model_cells
    # the 16-d baseline is scored at the model's sizes it has (16, 8, 4), not at 32
    assert {r["dim"] for r in rows if r["model"] == "plain"} == {16, 8, 4}
    markdown = (out / "results.md").read_text()
    assert "Command: `mrl-text evaluate" in markdown and "### scifact: ndcg@10" in markdown
    assert "| model |" in markdown and "| plain |" in markdown
    captured = capsys.readouterr()
    assert "### stsb: spearman" in captured.out
    # one max_length for the model and its baseline, and a progress bar per task and model
    assert "evaluating model at sizes [32, 16, 8, 4], 32 tokens" in captured.err
    assert "evaluating plain at sizes [16, 8, 4], 32 tokens" in captured.err
    assert all(f"{task} (plain)" in captured.err for task in ("stsb", "scifact", "intent"))

    # the card command turns the report into README.md + plot in the model folder, finding its own rows by the
    # folder's name (the --model-id names no row)
    assert main(["card", str(model_dir), "--results", str(out / "results.json"), "--model-id", "org/tiny"]) == 0
    card = ModelCard.load(model_dir / "README.md")
    assert "matryoshka" in card.data.tags and len(card.data.eval_results) == len(model_cells)
    assert 'from_pretrained("org/tiny")' in card.text and (model_dir / PLOT_FILENAME).is_file()


@pytest.mark.slow
def test_two_folders_of_one_name_get_their_own_rows_and_cards(data, make_model, tmp_path, capsys):
    """Two different local folders named alike must not share a row name; each card still finds its own rows."""
    first, second = tmp_path / "run1" / "model", tmp_path / "run2" / "model"
    make_model(seed=1, max_seq_length=32).save_pretrained(first)
    make_model(seed=2, max_seq_length=32).save_pretrained(second)
    out = tmp_path / "report"
    argv = [
        "evaluate",
        str(first),
        "--baseline",
        str(second),
        "--sts",
        str(data / "stsb" / "test.tsv"),
        "--max-length",
        "32",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in results["rows"]} == {"run1/model", "run2/model"}
    table = (out / "results.md").read_text().split("Values x100.")[1]  # the command above it is as typed
    assert "| run1/model |" in table and str(tmp_path) not in table
    for folder in (first, second):
        assert main(["card", str(folder), "--results", str(out / "results.json")]) == 0
        own = folder.parent.name + "/model"
        expected = {r["value"] for r in results["rows"] if r["model"] == own and r["metric"] == "spearman"}
        found = {
            r.metric_value
            for r in ModelCard.load(folder / "README.md").data.eval_results
            if r.metric_type == "spearman"
        }
        assert found == {round(v, 6) for v in expected}


@pytest.mark.slow
def test_evaluate_the_grid_of_sizes_precisions_and_layers(data, make_model, saved_models, tmp_path, capsys):
    from mrl_text import MatryoshkaModel
    from mrl_text.evaluation import evaluate_grid
    from mrl_text.evaluation.grid import RESCORED

    _, plain_dir = saved_models
    model = make_model(matryoshka_dimensions=(32, 16, 8), matryoshka_layers=[2, 1], max_seq_length=32)
    from mrl_text.data import load_sts
    from mrl_text.evaluation import STSEvaluator

    sts = str(data / "stsb" / "test.tsv")
    sentences1, sentences2, _ = load_sts(sts)
    model.calibrate_quantization([*sentences1, *sentences2, "the sun is lovely", "music with a guitar"])
    model_dir, out = tmp_path / "grid_model", tmp_path / "report"
    model.save_pretrained(model_dir)
    argv = [
        "evaluate",
        str(model_dir),
        "--sts",
        sts,
        "--retrieval",
        str(data / "scifact"),
        "--baseline",
        str(plain_dir),
        "--precisions",
        "float32,int8",
        "--precisions",
        "binary",
        "--layers",
        "1",
        "--rescore",
        "2",
        "--max-length",
        "32",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.png", "results_budget.png"]
    saved = json.loads((out / "results.json").read_text())
    cells = {(c["model"], c["layers"], c["precision"]) for c in saved["grid"]}
    for precision in ("float32", "int8", "binary", "binary" + RESCORED):
        assert {("grid_model", None, precision), ("grid_model", 1, precision), ("plain", None, precision)} <= cells
    assert not any(layers == 1 for name, layers, _ in cells if name == "plain")  # --layers are the model's
    assert {r["model"] for r in saved["rows"]} == {"grid_model", "plain"}  # full-depth float32 rows, as before
    # int8 cells use the model's calibrated ranges (the same values as evaluate_grid on the saved model)
    direct = evaluate_grid(MatryoshkaModel.from_pretrained(model_dir), [STSEvaluator(*load_sts(sts), name="stsb")],
                           precisions=["int8"], max_length=32)
    expected = {(c["dim"], c["layers"]): c["value"] for c in direct.cells("stsb")}
    got = {(c["dim"], c["layers"]): c["value"] for c in saved["grid"] if c["model"] == "grid_model"
           and c["task"] == "stsb" and c["metric"] == "spearman" and c["precision"] == "int8" and c["layers"] is None}
    assert got == pytest.approx(expected)
    assert "Best per budget (grid_model)" in (out / "results.md").read_text()
    capsys.readouterr()
    for extra, message in ((["--precisions", "float32,int4"], "precision='int4' is not supported"),
                           (["--layers", "5"], "layers=5 is out of range"),
                           (["--precisions", "binary", "--dims", "32", "4"], "sizes [4] are not multiples of 8"),
                           (["--layers", "1", "--rescore", "-1"], "rescore=-1")):
        err = _error(["evaluate", str(model_dir), "--sts", sts, "--out", str(tmp_path / "bad"), *extra], capsys)
        assert message in err, err
    assert not (tmp_path / "bad").exists()


def test_evaluate_reads_at_the_folders_saved_length_and_the_card_refuses_mixed_lengths(
    data, saved_models, tmp_path, capsys
):
    """One rule for the evaluation length: the CLI, like Python's evaluate(), reads at the folder's saved
    max_seq_length (baselines too), records it in the results, and the card will not set rows of different lengths
    side by side."""
    from mrl_text.cards.card_data import MatryoshkaModelCardData
    from mrl_text.data import load_sts
    from mrl_text.evaluation import Results, STSEvaluator, evaluate
    from mrl_text.models.modeling_matryoshka import MatryoshkaModel

    model_dir, plain_dir = saved_models  # saved with max_seq_length=32
    sts = ["--sts", str(data / "stsb" / "test.tsv")]
    assert main(["evaluate", str(model_dir), *sts, "--baseline", str(plain_dir), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "evaluating model at sizes [32, 16, 8, 4], 32 tokens" in err and "evaluating plain at sizes" in err
    assert "[16, 8, 4], 32 tokens" in err
    rows = Results.from_json(tmp_path / "r" / "results.json").rows
    assert {r["max_length"] for r in rows} == {32}
    loaded = MatryoshkaModel.from_pretrained(model_dir)
    python_rows = evaluate(loaded, [STSEvaluator(*load_sts(data / "stsb" / "test.tsv"), name="stsb")]).rows
    assert {r["max_length"] for r in python_rows} == {32}
    assert [r["value"] for r in python_rows] == [r["value"] for r in rows if r["model"] == "model"]

    # before-training rows at 32 tokens (from the trainer) and rows evaluated at 64 (the tiny model's limit): refused,
    # naming both lengths and the fix
    data_ = MatryoshkaModelCardData(model_name="model", evaluation={"max_seq_length": 32})
    data_.add_results(Results([{**r, "max_length": None} for r in rows if r["model"] == "model"]), "model",
                      before_training=True)
    data_.save(model_dir)
    assert main(["evaluate", str(model_dir), *sts, "--max-length", "64", "--out", str(tmp_path / "r64")]) == 0
    capsys.readouterr()
    card_before = (model_dir / "model_card_data.json").read_text()
    err = _error(["card", str(model_dir), "--results", str(tmp_path / "r64" / "results.json")], capsys)
    assert "32 tokens" in err and "64 tokens" in err and "--max-length 32" in err
    assert (model_dir / "model_card_data.json").read_text() == card_before and not (model_dir / "README.md").exists()
    # at the same length the card is written
    assert main(["card", str(model_dir), "--results", str(tmp_path / "r" / "results.json")]) == 0


def test_the_report_records_no_absolute_path_of_this_machine(data, saved_models, tmp_path, monkeypatch):
    """results.md's Command: line names paths relative to the working directory, or by their name when they lie
    outside it."""
    model_dir, plain_dir = saved_models
    monkeypatch.chdir(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.tsv"  # a file outside the working directory
    outside.write_text((data / "stsb" / "test.tsv").read_text())
    try:
        argv = ["evaluate", str(model_dir), "--sts", str(data / "stsb" / "test.tsv"), f"--sts={outside}",
                "--out", str(tmp_path / "report")]
        assert main(argv) == 0
    finally:
        outside.unlink()
    command = next(line for line in (tmp_path / "report" / "results.md").read_text().splitlines()
                   if line.startswith("Command:"))
    assert command == (f"Command: `mrl-text evaluate model --sts data/stsb/test.tsv --sts={outside.name} "
                       "--out report`")


def _error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_errors_name_the_file_and_write_no_report(data, saved_models, tmp_path, capsys):
    model_dir, _ = saved_models
    out = tmp_path / "report"
    bad = tmp_path / "bad.tsv"
    bad.write_text("text_a\ttext_b\tscore\nx\ty\t1\n")
    err = _error(["evaluate", str(model_dir), "--sts", str(bad), "--out", str(out)], capsys)
    assert "bad.tsv" in err and "sentence1" in err and "expected" in err
    err = _error(["evaluate", str(model_dir), "--sts", str(tmp_path / "missing.tsv"), "--out", str(out)], capsys)
    assert "missing.tsv" in err
    err = _error(
        ["evaluate", str(model_dir), "--sts", str(data / "stsb" / "test.tsv"), "--dims", "64", "--out", str(out)],
        capsys,
    )
    assert "size=64" in err
    err = _error(
        ["evaluate", str(tmp_path / "no-model"), "--sts", str(data / "stsb" / "test.tsv"), "--out", str(out)], capsys
    )
    assert "no-model" in err
    assert "Nothing to evaluate" in _error(["evaluate", str(model_dir), "--out", str(out)], capsys)
    err = _error(
        ["evaluate", str(model_dir), "--sts", str(data / "stsb" / "test.tsv"), "--max-length", "0", "--out", str(out)],
        capsys,
    )
    assert "max_length=0 must be a positive number of tokens" in err
    assert not out.exists()
    assert "results.json" in _error(["card", str(model_dir), "--results", str(tmp_path / "results.json")], capsys)


def test_help_shows_examples_and_the_console_script_is_declared(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "mrl-text evaluate out/ --sts" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--max-length TOKENS" in capsys.readouterr().out.replace("\n", " ")
    assert build_parser().parse_args(["evaluate", "m", "--out", "o"]).max_length is None  # the folder's, else 256
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mrl-text"] == "mrl_text_cli:main"


def test_evaluate_checks_its_output_before_any_work(data, saved_models, tmp_path, capsys, monkeypatch):
    """An --out that is a file, or a non-empty folder (a model folder too), is refused before any data file is read
    or any text encoded; --overwrite writes the report into a non-empty folder."""
    import mrl_text.cli as cli

    model_dir, _ = saved_models
    sts = ["--sts", str(data / "stsb" / "test.tsv")]
    report_file = tmp_path / "report.txt"
    report_file.write_text("mine")
    build_evaluators = cli.build_evaluators

    def no_work(args):
        raise AssertionError("the data were read before --out was checked")

    monkeypatch.setattr(cli, "build_evaluators", no_work)
    err = _error(["evaluate", str(model_dir), *sts, "--out", str(report_file)], capsys)
    assert "report.txt is a file" in err
    assert report_file.read_text() == "mine"
    files = sorted(p.name for p in model_dir.iterdir())
    err = _error(["evaluate", str(model_dir), *sts, "--out", str(model_dir)], capsys)
    assert "is not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in model_dir.iterdir()) == files
    monkeypatch.setattr(cli, "build_evaluators", build_evaluators)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "notes.txt").write_text("mine")
    assert main(["evaluate", str(model_dir), *sts, "--out", str(tmp_path / "report"), "--overwrite"]) == 0
    report = tmp_path / "report"
    assert (report / "results.json").is_file() and (report / "notes.txt").read_text() == "mine"


def test_help_and_argument_errors_come_before_torch_is_imported():
    """`mrl-text --help` answers from the light `mrl_text_cli` module: nothing imports torch or mrl_text for it."""
    import subprocess
    import sys

    script = (
        "import sys, mrl_text_cli\n"
        "for argv in (['--help'], ['evaluate', '--help'], ['evaluate']):\n"
        "    try:\n"
        "        mrl_text_cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'mrl_text') if m in sys.modules))\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert finished.stdout.strip().splitlines()[-1] == "[]", finished.stdout + finished.stderr
    assert "the following arguments are required: model, --out" in finished.stderr


def test_the_help_shows_the_library_defaults():
    import mrl_text_cli
    from mrl_text.deploy.export import EXPORT_FORMATS
    from mrl_text.evaluation.embedders import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH

    assert mrl_text_cli.EXPORT_FORMATS == EXPORT_FORMATS
    assert mrl_text_cli.DEFAULT_BATCH_SIZE == DEFAULT_BATCH_SIZE
    assert mrl_text_cli.DEFAULT_MAX_LENGTH == DEFAULT_MAX_LENGTH
