import pytest
import torch
from huggingface_hub import ModelCard

import mrl_text
from mrl_text.evaluation import Results
from mrl_text.model_card import PLOT_FILENAME, TEMPLATE_PATH, build_card, save_with_card


def _results(model_name="org/tiny", dims=(32, 16, 8, 4)):
    rows = []
    for dim in dims:
        rows.append({"model": model_name, "task": "stsb", "metric": "spearman", "dim": dim, "value": 0.5 + dim / 100})
        rows.append({"model": model_name, "task": "stsb", "metric": "pearson", "dim": dim, "value": 0.4})
        rows.append({"model": model_name, "task": "scifact", "metric": "ndcg@10", "dim": dim, "value": 0.3})
        rows.append({"model": "baseline", "task": "stsb", "metric": "spearman", "dim": dim, "value": 0.1})
    return Results(rows, {"stsb": "spearman", "scifact": "ndcg@10"})


def test_card_metadata_and_model_index(make_model):
    model = make_model(matryoshka_weights=[1.0, 1.0, 0.5, 0.5])
    model.card_data = {"loss": "MatryoshkaLoss(InfoNCELoss)", "datasets": ["sentence-transformers/all-nli"], "epochs": 1}
    card = build_card(model, _results(), model_id="org/tiny", base_model="bert-base-uncased")
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
    model.card_data = {"loss": "MatryoshkaLoss(InfoNCELoss)", "learning_rate": 2e-5}
    body = str(build_card(model, _results(), model_id="org/tiny"))
    assert "32, 16, 8, 4" in body and "default returned size: 16" in body
    assert 'AutoModel.from_pretrained("org/tiny")' in body and "dim=16" in body  # transformers encode(dim=...)
    assert "SentenceTransformer(" in body and "truncate_dim=" in body
    assert "### stsb: spearman" in body and "| baseline | 10.00 |" in body  # results x100, baseline row
    assert f"]({PLOT_FILENAME})" in body
    assert "| 16 | 64 | 50.0% | 66.00 | 80.5% |" in body  # size guide: bytes, share, value, relative to full
    assert "learning_rate: 2e-05" in body and "MatryoshkaLoss(InfoNCELoss)" in body
    assert "kusupati2022matryoshka" in body


def test_card_without_results(make_model):
    body = str(build_card(make_model()))
    assert "## Evaluation" not in body and "model-index" not in body and "## Citation" in body


def test_template_ships_inside_the_package():
    assert TEMPLATE_PATH.is_file() and TEMPLATE_PATH.parent.parent == __import__("pathlib").Path(mrl_text.__file__).parent


def test_save_pretrained_writes_card_when_results_are_known(make_model, tmp_path, sentences):
    model = make_model()
    model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "README.md").exists()  # nothing known: no card

    model.eval_results = _results(model_name="MatryoshkaModel")
    model.save_pretrained(tmp_path / "with")
    card = ModelCard.load(tmp_path / "with" / "README.md")
    assert len(card.data.eval_results) == 12
    assert (tmp_path / "with" / PLOT_FILENAME).read_bytes()[:4] == b"\x89PNG"
    loaded = mrl_text.MatryoshkaModel.from_pretrained(tmp_path / "with")
    torch.testing.assert_close(loaded.encode(sentences), model.encode(sentences))

    save_with_card(make_model(), tmp_path / "explicit", _results())
    card = ModelCard.load(tmp_path / "explicit" / "README.md")
    assert len(card.data.eval_results) == 12 and (tmp_path / "explicit" / PLOT_FILENAME).is_file()
    assert f'AutoModel.from_pretrained("{tmp_path / "explicit"}")' in card.text  # the snippet loads this folder


def test_truncate_dim_at_load_time_as_the_card_says(make_model, tmp_path, sentences):
    from transformers import AutoModel

    make_model().save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path, truncate_dim=8).encode(sentences).shape == (len(sentences), 8)
