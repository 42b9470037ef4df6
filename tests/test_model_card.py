import json
import warnings

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard

import mrl_text
from mrl_text.cards.card import PLOT_FILENAME, TEMPLATE_PATH, build_card, save_with_card
from mrl_text.cards.card_data import CARD_DATA_FILENAME, MatryoshkaModelCardData, display_name, parse_trainer_metrics
from mrl_text.evaluation import Results, STSEvaluator, evaluate

from .conftest import tiny_bert_config


def _results(model_name="org/tiny", dims=(32, 16, 8, 4)):
    rows = []
    for dim in dims:
        rows.append({"model": model_name, "task": "stsb", "metric": "spearman", "dim": dim, "value": 0.5 + dim / 100})
        rows.append({"model": model_name, "task": "stsb", "metric": "pearson", "dim": dim, "value": 0.4})
        rows.append({"model": model_name, "task": "scifact", "metric": "ndcg@10", "dim": dim, "value": 0.3})
        rows.append({"model": "baseline", "task": "stsb", "metric": "spearman", "dim": dim, "value": 0.1})
    return Results(rows, {"stsb": "spearman", "scifact": "ndcg@10"})


def _card_data(**fields):
    return MatryoshkaModelCardData(**fields).add_results(_results(), "org/tiny")


def test_card_metadata_and_model_index(make_model):
    model = make_model(matryoshka_weights=[1.0, 1.0, 0.5, 0.5])
    model.model_card_data = _card_data(
        loss={"name": "MatryoshkaLoss(InfoNCELoss)"},
        train_datasets=[{"name": "all-nli", "id": "sentence-transformers/all-nli"}],
    )
    card = build_card(model, model_id="org/tiny", base_model="bert-base-uncased")
    parsed = ModelCard(str(card))  # the YAML header is what the Hub reads
    data = parsed.data
    assert data.library_name == "transformers" and data.pipeline_tag == "sentence-similarity"
    assert "matryoshka" in data.tags and data.base_model == "bert-base-uncased"
    assert data.datasets == ["sentence-transformers/all-nli"] and data.license == "apache-2.0"
    # one result per task, metric and size, of the model itself (not the baseline)
    entries = {(r.dataset_name, r.metric_type, r.metric_config): r.metric_value for r in data.eval_results}
    assert len(entries) == 3 * 4
    assert entries[("stsb", "spearman", "dim_16")] == pytest.approx(0.66)
    assert {r.task_type for r in data.eval_results} == {"sentence-similarity", "text-retrieval"}


def test_card_body(make_model):
    model = make_model(truncate_dim=16)
    model.model_card_data = _card_data(loss={"name": "MatryoshkaLoss(InfoNCELoss)", "citation": "@misc{mine2024,}"},
                                       hyperparameters={"learning_rate": 2e-5})
    body = str(build_card(model, model_id="org/tiny"))
    assert "32, 16, 8, 4" in body and "default returned size: 16" in body
    assert 'AutoModel.from_pretrained("org/tiny")' in body and "dim=16" in body  # transformers encode(dim=...)
    assert "SentenceTransformer(" in body and "truncate_dim=" in body
    assert "### stsb: spearman" in body and "| baseline | 10.00 |" in body  # results x100, baseline row
    assert f"]({PLOT_FILENAME})" in body
    assert "| 16 | 64 | 50.0% | 66.00 | 80.5% |" in body  # size guide: bytes, share, value, relative to full
    assert "`learning_rate`: 2e-05" in body and "MatryoshkaLoss(InfoNCELoss)" in body
    assert "kusupati2022matryoshka" in body and "@misc{mine2024,}" in body  # MRL and the loss's own citation


def test_card_without_results(make_model):
    body = str(build_card(make_model()))
    assert "## Evaluation" not in body and "model-index" not in body and "## Citation" in body


def test_template_ships_inside_the_package():
    assert TEMPLATE_PATH.is_file() and __import__("pathlib").Path(mrl_text.__file__).parent in TEMPLATE_PATH.parents


@pytest.mark.slow
def test_save_pretrained_writes_card_when_results_are_known(make_model, tmp_path, sentences):
    model = make_model()
    model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "README.md").exists()  # nothing known: no card

    model.model_card_data = MatryoshkaModelCardData().add_results(_results(), "org/tiny")
    model.save_pretrained(tmp_path / "with")
    card = ModelCard.load(tmp_path / "with" / "README.md")
    assert len(card.data.eval_results) == 12
    assert (tmp_path / "with" / PLOT_FILENAME).read_bytes()[:4] == b"\x89PNG"
    loaded = MatryoshkaModelCardData.load(tmp_path / "with")
    assert loaded.own_results().rows == model.model_card_data.own_results().rows
    loaded = mrl_text.MatryoshkaModel.from_pretrained(tmp_path / "with")
    torch.testing.assert_close(loaded.encode(sentences), model.encode(sentences))

    save_with_card(make_model(), tmp_path / "explicit", _results(), results_model="org/tiny")
    card = ModelCard.load(tmp_path / "explicit" / "README.md")
    assert len(card.data.eval_results) == 12 and (tmp_path / "explicit" / PLOT_FILENAME).is_file()
    # the snippet loads this folder, named without the absolute path of this machine
    assert 'AutoModel.from_pretrained("explicit")' in card.text and str(tmp_path) not in card.text


def test_a_loaded_model_keeps_its_card_when_saved_again(make_model, tmp_path):
    """from_pretrained then save_pretrained elsewhere writes the card from the card data saved with the model; saving
    in place after a change re-renders it (no stale README)."""
    model = make_model()
    model.model_card_data = MatryoshkaModelCardData(details={"note": "trained by me"}).add_results(
        _results(), "org/tiny")
    model.save_pretrained(tmp_path / "trained")
    loaded = mrl_text.MatryoshkaModel.from_pretrained(tmp_path / "trained")
    loaded.save_pretrained(tmp_path / "again")
    for name in ("README.md", CARD_DATA_FILENAME, PLOT_FILENAME):
        assert (tmp_path / "again" / name).is_file(), name
    card = (tmp_path / "again" / "README.md").read_text()
    assert "trained by me" in card and len(ModelCard.load(tmp_path / "again" / "README.md").data.eval_results) == 12
    assert 'AutoModel.from_pretrained("again")' in card  # the snippets load the new folder

    loaded.config.truncate_dim = 8  # a change, saved in place: the card says what the folder now does
    loaded.save_pretrained(tmp_path / "trained")
    assert "default returned size: 8" in (tmp_path / "trained" / "README.md").read_text()


def test_a_card_carries_only_its_own_models_results(make_model, tmp_path):
    # neither "org/tiny" nor "baseline" is this model: no fallback to the first model of the table
    with pytest.raises(ValueError, match=r"None of the models.*'org/tiny', 'baseline'.*results-model"):
        save_with_card(make_model(), tmp_path / "out", _results())
    assert not (tmp_path / "out" / "README.md").exists()


@pytest.mark.slow
def test_old_attributes_still_work_with_a_deprecation_warning(make_model, tmp_path):
    model = make_model()
    model.eval_results = _results(model_name="MatryoshkaModel")  # the name evaluate() gives an unsaved model
    model.card_data = {"loss": "MatryoshkaLoss(InfoNCELoss)", "datasets": ["sentence-transformers/all-nli"],
                       "epochs": 1}
    with pytest.warns(DeprecationWarning, match="model_card_data"):
        model.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert len(card.data.eval_results) == 12 and card.data.datasets == ["sentence-transformers/all-nli"]
    assert "- loss: MatryoshkaLoss(InfoNCELoss)" in card.text


def test_truncate_dim_at_load_time_as_the_card_says(make_model, tmp_path, sentences):
    from transformers import AutoModel

    make_model().save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path, truncate_dim=8).encode(sentences).shape == (len(sentences), 8)


def test_nan_results_stay_out_of_the_model_index(make_model):
    results = _results()
    results.rows[0]["value"] = float("nan")
    card = ModelCard(str(build_card(make_model(), results, model_id="org/tiny")))
    assert len(card.data.eval_results) == 11


def test_task_types_of_text_and_image_text_cards(make_model):
    from mrl_text import MatryoshkaDualEncoder, MatryoshkaDualEncoderConfig

    from .test_dual_encoder import tiny_clip_config

    def rows(model, dims):
        return Results(
            [{"model": model, "task": "zero-shot", "metric": "accuracy", "dim": d, "value": 0.5} for d in dims]
            + [{"model": model, "task": "knn", "metric": "knn_accuracy", "dim": d, "value": 0.5} for d in dims]
            + [{"model": model, "task": "retrieval", "metric": "text_to_image_recall@1", "dim": d, "value": 0.4}
               for d in dims]
        )

    config = MatryoshkaDualEncoderConfig(encoder=tiny_clip_config(), matryoshka_dimensions=[24, 12])
    dual = MatryoshkaDualEncoder(config)
    card = ModelCard(str(build_card(dual, rows("org/dual", [24, 12]), model_id="org/dual")))
    types = {(r.dataset_name, r.task_type) for r in card.data.eval_results}
    # a dual encoder's zero-shot and kNN accuracy are image tasks, never text-classification
    assert types == {("zero-shot", "zero-shot-image-classification"), ("knn", "image-classification"),
                     ("retrieval", "image-text-retrieval")}
    text_rows = Results([{"model": "org/tiny", "task": "banking77", "metric": "accuracy", "dim": 32, "value": 0.9}])
    card = ModelCard(str(build_card(make_model(), text_rows, model_id="org/tiny")))
    assert {r.task_type for r in card.data.eval_results} == {"text-classification"}
    # a task type the evaluator declared wins over the metric's name
    model = make_model()
    model.model_card_data = MatryoshkaModelCardData(task_types={"banking77": "text-retrieval"})
    card = ModelCard(str(build_card(model, text_rows, model_id="org/tiny")))
    assert {r.task_type for r in card.data.eval_results} == {"text-retrieval"}


def test_display_names_hide_local_paths(tmp_path):
    (tmp_path / "pkg" / "model").mkdir(parents=True)
    assert display_name(str(tmp_path / "pkg" / "model")) == "pkg/model"
    assert display_name(str(tmp_path / "pkg")) == "pkg"
    assert display_name("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_folder_whose_card_loads_it_by_a_local_path_is_named_as_a_local_folder(make_model, tmp_path, monkeypatch):
    """The recipe's card loads its folder as `from_pretrained("outputs/<name>")`: that is a local path, not a Hub id,
    so tables and plots name the folder by its name; a card copied from the Hub still gives the Hub id."""
    from mrl_text.evaluation import as_embedder
    from mrl_text.models.configuration_matryoshka import portable_name

    monkeypatch.chdir(tmp_path)
    model = make_model()
    model.model_card_data = _card_data()
    model.save_pretrained("outputs/tiny-matryoshka")
    assert 'from_pretrained("outputs/tiny-matryoshka")' in (tmp_path / "outputs/tiny-matryoshka/README.md").read_text()
    assert portable_name("outputs/tiny-matryoshka") == "tiny-matryoshka"
    assert as_embedder("outputs/tiny-matryoshka").name == "tiny-matryoshka"
    moved = tmp_path / "elsewhere" / "outputs" / "tiny-matryoshka"  # by its absolute path, from another directory
    moved.parent.mkdir(parents=True)
    (tmp_path / "outputs" / "tiny-matryoshka").rename(moved)
    monkeypatch.chdir(tmp_path / "elsewhere" / "outputs")
    assert portable_name(str(moved)) == "tiny-matryoshka" and portable_name("tiny-matryoshka") == "tiny-matryoshka"
    hub = tmp_path / "all-MiniLM-L6-v2"
    hub.mkdir()
    (hub / "README.md").write_text('model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")\n')
    assert portable_name(str(hub)) == "sentence-transformers/all-MiniLM-L6-v2"


def test_trainer_metrics_parse_back_to_results():
    metrics = {"eval_stsb_spearman_64": 0.8, "eval_sci_fact_ndcg_at_10_16": 0.5, "eval_loss": 1.0, "epoch": 1.0}
    results = parse_trainer_metrics(metrics, ["stsb", "sci_fact"])
    expected = {("stsb", "spearman", 64), ("sci_fact", "ndcg@10", 16)}
    assert {(r["task"], r["metric"], r["dim"]) for r in results.rows} == expected


# --- cards filled by training (MatryoshkaModelCardCallback) --------------------------------------------------------

STS = (
    ["a man is playing a guitar with a song", "the dog runs in the park on a sunny day",
     "what is my bank account balance", "a woman is eating bread", "the weather is lovely today in the park"],
    ["a man plays music on the guitar today", "a cat is sleeping in the house", "help with my account balance please",
     "a child is eating food", "rain and bad weather tomorrow"],
    [4.5, 0.5, 3.5, 2.5, 1.0],
)
PAIRS = {"anchor": ["a man plays guitar", "the dog runs", "what is my balance", "hello world"] * 2,
         "positive": ["a man is playing music", "a dog is running", "account balance please", "hello"] * 2}


@pytest.fixture
def encoder_dir(tmp_path):
    """A tiny random BERT saved in a local folder (a starting model that is not on the Hub)."""
    from transformers import BertModel, BertTokenizerFast

    from .conftest import build_tokenizer

    build_tokenizer(tmp_path / "tiny-encoder")  # writes the vocabulary
    # read it with `vocab=` (transformers 5 ignores `vocab_file=`): the words must be tokens, not [UNK], so that
    # truncating to max_seq_length changes the embeddings
    tokenizer = BertTokenizerFast(vocab=str(tmp_path / "tiny-encoder" / "vocab.txt"))
    BertModel(tiny_bert_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "tiny-encoder")
    tokenizer.save_pretrained(tmp_path / "tiny-encoder")
    return tmp_path / "tiny-encoder"


def _train(encoder_dir, tmp_path, max_seq_length=4, **overrides):
    from mrl_text.training.trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments

    torch.manual_seed(0)
    model = mrl_text.MatryoshkaModel.from_encoder(str(encoder_dir), matryoshka_dimensions=[32, 16, 8])
    args = MatryoshkaTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, max_seq_length=max_seq_length, **overrides,
    )
    evaluator = STSEvaluator(*STS, name="stsb")
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PAIRS), evaluators=[evaluator])
    trainer.evaluate()  # before training
    trainer.train()
    trainer.evaluate()
    return trainer, evaluator


@pytest.mark.slow
def test_training_fills_the_card(encoder_dir, tmp_path):
    trainer, _ = _train(encoder_dir, tmp_path, save_strategy="steps", save_steps=2)
    data = trainer.model.model_card_data
    assert data.model_name == "run" and data.loss["name"] == "MatryoshkaLoss(InfoNCELoss)"  # the trainer's default
    assert data.loss["config"]["loss_config"]["scale"] == 20.0
    assert data.loss["config"]["matryoshka_dimensions"] == [32, 16, 8]
    assert data.hyperparameters["learning_rate"] == 1e-3 and "output_dir" not in data.hyperparameters
    assert "dataloader_pin_memory" not in data.hyperparameters  # switched off on CPU by the arguments, not the user
    assert data.train_datasets[0]["rows"] == 8 and data.train_datasets[0]["columns"] == ["anchor", "positive"]
    assert data.versions["transformers"] and data.training["steps"] == 2 and "training time" in data.training
    # before and after, every size; only "after" is this model's
    assert set(data.results.models) == {"run", "tiny-encoder (before training)"}
    assert data.own_results().dims("stsb") == [32, 16, 8]
    # checkpoints carry the card too
    assert (tmp_path / "run" / "checkpoint-2" / "README.md").is_file()

    out = tmp_path / "saved"
    trainer.save_model(out)
    card = ModelCard.load(out / "README.md")
    assert {(r.dataset_name, r.task_type) for r in card.data.eval_results} == {("stsb", "sentence-similarity")}
    assert len(card.data.eval_results) == 2 * 3  # spearman and pearson at 3 sizes, of the trained model only
    text = card.text
    assert "Training data" in text and "8 rows" in text and "`learning_rate`: 0.001" in text and "Versions" in text
    assert "built on tiny-encoder" in text and str(tmp_path) not in text  # a local base model, named without its path
    assert str(tmp_path) not in json.dumps(json.loads((out / CARD_DATA_FILENAME).read_text()))
    assert (out / PLOT_FILENAME).is_file()


@pytest.mark.slow
def test_card_numbers_reproduce_from_the_saved_folder(encoder_dir, tmp_path):
    trainer, evaluator = _train(encoder_dir, tmp_path, max_seq_length=4, save_strategy="no")
    trainer.save_model(tmp_path / "saved")
    card = MatryoshkaModelCardData.load(tmp_path / "saved").own_results()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = mrl_text.MatryoshkaModel.from_pretrained(tmp_path / "saved")
    assert loaded.config.max_seq_length == 4  # the length the card's numbers were computed at
    again = evaluate(loaded, [evaluator])  # no settings passed: as saved
    for row in card.rows:
        assert again.value(row["task"], row["metric"], row["dim"]) == pytest.approx(row["value"], abs=0.01)


def test_base_model_is_the_hub_id_when_the_encoder_config_names_one(make_model):
    model = make_model()
    model.config.encoder._name_or_path = "google-bert/bert-base-uncased"
    card = ModelCard(str(build_card(model, _results(), model_id="org/tiny")))
    assert card.data.base_model == "google-bert/bert-base-uncased"


# --- `mrl-text card`: merge into the card data a recipe saved, or refuse without --overwrite ----------------------


def _cli_error(argv, capsys):
    from mrl_text.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.slow
def test_card_command_merges_with_the_training_details(make_model, tmp_path, capsys):
    from mrl_text.cli import main

    folder = tmp_path / "trained"
    model = make_model()
    model.model_card_data = MatryoshkaModelCardData(
        model_name="trained", loss={"name": "MatryoshkaLoss(InfoNCELoss)"}, hyperparameters={"learning_rate": 5e-5},
        train_datasets=[{"name": "chatterbot-corpus", "rows": 580}],
    ).add_results(_results(model_name="trained", dims=(32, 16)), "trained")
    model.save_pretrained(folder)
    # `mrl-text evaluate trained/` names the model by the path it was given; a baseline is in the file too
    report = Results([{"model": f"{folder}/", "task": "banking77", "metric": "accuracy", "dim": d, "value": 0.8}
                      for d in (32, 16)] + [{"model": "baseline", "task": "banking77", "metric": "accuracy", "dim": 32,
                                             "value": 0.7}])
    report.to_json(tmp_path / "results.json")
    assert main(["card", str(folder), "--results", str(tmp_path / "results.json")]) == 0
    card = ModelCard.load(folder / "README.md")
    tasks = {r.dataset_name for r in card.data.eval_results}
    assert tasks == {"stsb", "scifact", "banking77"}  # the recipe's results kept, the new ones added
    assert "MatryoshkaLoss(InfoNCELoss)" in card.text and "`learning_rate`: 5e-05" in card.text
    assert "chatterbot-corpus (580 rows)" in card.text and "| baseline |" in card.text
    assert str(tmp_path) not in card.text


def test_card_command_refuses_to_drop_a_card_it_cannot_merge(make_model, tmp_path, capsys):
    from mrl_text.cli import main

    make_model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "README.md").write_text("# my hand-written card\n")
    _results(model_name=str(tmp_path / "m")).to_json(tmp_path / "results.json")
    err = _cli_error(["card", str(tmp_path / "m"), "--results", str(tmp_path / "results.json")], capsys)
    assert "README.md exists" in err and "--overwrite" in err
    assert (tmp_path / "m" / "README.md").read_text() == "# my hand-written card\n"
    assert main(["card", str(tmp_path / "m"), "--results", str(tmp_path / "results.json"), "--overwrite"]) == 0
    assert len(ModelCard.load(tmp_path / "m" / "README.md").data.eval_results) == 12


def test_card_command_takes_only_this_models_rows(make_model, tmp_path, capsys):
    from mrl_text.cli import main

    make_model().save_pretrained(tmp_path / "m")
    _results(model_name="some-other-model").to_json(tmp_path / "results.json")
    err = _cli_error(["card", str(tmp_path / "m"), "--results", str(tmp_path / "results.json")], capsys)
    assert "some-other-model" in err and "--results-model" in err and not (tmp_path / "m" / "README.md").exists()
    argv = ["card", str(tmp_path / "m"), "--results", str(tmp_path / "results.json"),
            "--results-model", "some-other-model"]
    assert main(argv) == 0
    assert len(ModelCard.load(tmp_path / "m" / "README.md").data.eval_results) == 12
