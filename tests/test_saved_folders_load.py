"""Folders saved before the house move (tests/fixtures/saved_before_house_move, written by the code of main at
de01b26) still load with today's package and give the same outputs: users' saved models outlive refactors."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

import mrl_text

FIXTURES = Path(__file__).parent / "fixtures" / "saved_before_house_move"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
TEXTS = EXPECTED["texts"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "adaptor"])
def test_embedding_folders_give_the_same_embeddings(kind):
    for model in (
        mrl_text.MatryoshkaModel.from_pretrained(FIXTURES / kind),
        AutoModel.from_pretrained(FIXTURES / kind),
    ):
        assert type(model) is mrl_text.MatryoshkaModel
        for dim, rows in EXPECTED[kind].items():
            torch.testing.assert_close(model.encode(TEXTS, dim=int(dim)), torch.tensor(rows), atol=1e-5, rtol=0)


def test_adaptor_folder_keeps_its_adaptor():
    model = mrl_text.MatryoshkaModel.from_pretrained(FIXTURES / "adaptor")
    assert model.adaptor is not None and model.adaptor.config.adapted_dimensions == [8, 4]


def test_sentence_transformers_loads_the_text_folder():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(FIXTURES / "text"), device="cpu", trust_remote_code=True)
    for dim in (16, 8):
        embeddings = st.encode(TEXTS, dim=dim, convert_to_tensor=True)
        torch.testing.assert_close(embeddings, torch.tensor(EXPECTED["text"][str(dim)]), atol=1e-5, rtol=0)


def test_classification_folder_gives_the_same_logits():
    model = AutoModelForSequenceClassification.from_pretrained(FIXTURES / "classification").eval()
    assert type(model) is mrl_text.MatryoshkaForSequenceClassification
    inputs = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        for dim, logits in EXPECTED["classification"].items():
            torch.testing.assert_close(model(**inputs, dim=int(dim)).logits, torch.tensor(logits), atol=1e-5, rtol=0)


def test_dual_encoder_folder_gives_the_same_embeddings():
    model = AutoModel.from_pretrained(FIXTURES / "dual_encoder").eval()
    assert type(model) is mrl_text.MatryoshkaDualEncoder
    inputs = model.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    pixels = torch.load(FIXTURES / "dual_encoder_pixels.pt")
    with torch.no_grad():
        for dim, expected in EXPECTED["dual_encoder"].items():
            output = model(**inputs, pixel_values=pixels, dim=int(dim))
            torch.testing.assert_close(output.text_embeds, torch.tensor(expected["text_embeds"]), atol=1e-5, rtol=0)
            torch.testing.assert_close(output.image_embeds, torch.tensor(expected["image_embeds"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["text", "classification", "dual_encoder"])
def test_resaved_folders_load_again(kind, tmp_path):
    auto = AutoModelForSequenceClassification if kind == "classification" else AutoModel
    model = auto.from_pretrained(FIXTURES / kind)
    model.save_pretrained(tmp_path / kind)
    again = auto.from_pretrained(tmp_path / kind)
    assert type(again) is type(model)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor)
