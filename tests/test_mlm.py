"""MatryoshkaForMaskedLM: MLM from every prefix, tied decoder, save/load (Auto classes, remote code), conversion."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForMaskedLM, DataCollatorForLanguageModeling

from mrl_text import MatryoshkaConfig, MatryoshkaForMaskedLM, MatryoshkaModel

from .conftest import run_without_mrl_text, tiny_bert_config

DIMS = [32, 16, 8, 4]


@pytest.fixture
def make_mlm(tiny_tokenizer):
    def factory(dims=DIMS, seed=0, encoder=None, **config_kwargs):
        torch.manual_seed(seed)
        config = MatryoshkaConfig(encoder=encoder or tiny_bert_config(vocab_size=len(tiny_tokenizer)),
                                  matryoshka_dimensions=list(dims), **config_kwargs)
        model = MatryoshkaForMaskedLM(config).eval()
        model.tokenizer = tiny_tokenizer
        return model

    return factory


@pytest.fixture
def masked_batch(tiny_tokenizer, sentences):
    torch.manual_seed(1)
    collator = DataCollatorForLanguageModeling(tiny_tokenizer, mlm_probability=0.3)
    batch = collator([tiny_tokenizer(s) for s in sentences])
    assert (batch["labels"] != -100).any()
    return batch


def test_loss_is_the_weighted_sum_of_per_size_mlm_losses(make_mlm, masked_batch):
    weights = [1.0, 0.5, 2.0, 0.0]
    model = make_mlm(matryoshka_weights=weights)
    out = model(**masked_batch)
    labels = masked_batch["labels"][masked_batch["labels"] != -100]
    assert len(out.matryoshka_logits) == len(DIMS)
    assert all(logits.shape == (labels.numel(), model.config.encoder.vocab_size) for logits in out.matryoshka_logits)
    expected = sum(w * F.cross_entropy(logits, labels) for w, logits in zip(weights, out.matryoshka_logits))
    torch.testing.assert_close(out.loss, expected)
    # each size's logits come from that size's own head, and the sizes differ
    assert not torch.allclose(out.matryoshka_logits[0], out.matryoshka_logits[3])
    torch.testing.assert_close(model(**masked_batch, dim=8).logits, out.matryoshka_logits[2])


def test_each_size_learns_from_its_prefix_only(make_mlm, masked_batch):
    """The size-d loss reaches the encoder through the first d coordinates of the token states alone."""
    model = make_mlm(matryoshka_weights=[0.0, 0.0, 1.0, 0.0]).train()
    out = model(**masked_batch)
    states = out.last_hidden_state
    (grad,) = torch.autograd.grad(out.loss, states)
    assert grad[..., :8].abs().sum() > 0 and grad[..., 8:].abs().sum() == 0


def test_inference_logits_at_dim(make_mlm, masked_batch):
    model = make_mlm(truncate_dim=16)
    inputs = {k: v for k, v in masked_batch.items() if k != "labels"}
    seq = inputs["input_ids"].shape
    full = model(**inputs, dim=32).logits
    assert full.shape == (*seq, model.config.encoder.vocab_size)
    # the default is the config's truncate_dim
    torch.testing.assert_close(model(**inputs).logits, model(**inputs, dim=16).logits)
    assert not torch.allclose(model(**inputs).logits, full)
    with pytest.raises(ValueError, match=r"dim=12 has no MLM head.*\[32, 16, 8, 4\]"):
        model(**inputs, dim=12)
    with pytest.raises(ValueError, match="dim=64 is larger than the embedding size 32"):
        model(**inputs, dim=64)


def test_decoder_tied_to_the_input_embedding_where_the_encoder_ties(make_mlm, tiny_tokenizer):
    tied = make_mlm()
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    untied = make_mlm(encoder=tiny_bert_config(vocab_size=len(tiny_tokenizer)).__class__(
        **{**tiny_bert_config(vocab_size=len(tiny_tokenizer)).to_dict(), "tie_word_embeddings": False}))
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    # MRL-E: one transform whose first d columns serve size d; no more parameters than a single head
    efficient = make_mlm(efficient_heads=True)
    count = lambda m: sum(p.numel() for p in m.lm_head.transform.parameters())  # noqa: E731
    assert count(efficient) == 32 * 32 + 32 < count(tied) == (32 + 16 + 8 + 4) * 32 + 4 * 32


def test_bad_configs(tiny_tokenizer):
    encoder = tiny_bert_config(vocab_size=len(tiny_tokenizer))
    with pytest.raises(ValueError, match="projection_dim=16 does not apply"):
        MatryoshkaForMaskedLM(MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=[16, 8], projection_dim=16))
    with pytest.raises(ValueError, match="size=48 is larger than the embedding size 32"):
        MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=[48, 32, 16])


def test_save_and_load_with_auto_classes(make_mlm, masked_batch, tmp_path):
    model = make_mlm()
    model.save_pretrained(tmp_path / "mlm")
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    assert isinstance(loaded, MatryoshkaForMaskedLM)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    for a, b in zip(model(**masked_batch).matryoshka_logits, loaded(**masked_batch).matryoshka_logits):
        torch.testing.assert_close(a, b)
    assert loaded.tokenizer is not None
    # the saved MLM folder is also a starting point for embedding fine-tuning: its encoder, without the head
    embedder = AutoModel.from_pretrained(tmp_path / "mlm")
    assert isinstance(embedder, MatryoshkaModel) and embedder.config.matryoshka_dimensions == DIMS
    for (name, p), q in zip(model.matryoshka.state_dict().items(), embedder.state_dict().values()):
        assert torch.equal(p, q), name


def test_to_embedding_model_carries_the_encoder_exactly(make_mlm, sentences):
    model = make_mlm(matryoshka_weights=[1.0, 1.0, 2.0, 2.0])
    embedder = model.to_embedding_model(pooling="cls")
    assert isinstance(embedder, MatryoshkaModel)
    assert embedder.config.matryoshka_dimensions == DIMS and embedder.config.matryoshka_weights == [1.0, 1.0, 2.0, 2.0]
    assert embedder.config.pooling == "cls" and model.config.pooling == "mean"  # the MLM model's config is untouched
    mlm_state, embedder_state = model.matryoshka.encoder.state_dict(), embedder.encoder.state_dict()
    assert mlm_state.keys() == embedder_state.keys()
    assert all(torch.equal(mlm_state[k], embedder_state[k]) for k in mlm_state)
    assert embedder.encode(sentences, dim=8).shape == (len(sentences), 8)
    # a copy: fine-tuning the embedder leaves the pretrained model as it was
    with torch.no_grad():
        embedder.encoder.embeddings.word_embeddings.weight.add_(1.0)
    assert torch.equal(model.matryoshka.encoder.embeddings.word_embeddings.weight, mlm_state["embeddings.word_embeddings.weight"])
    with pytest.raises(ValueError, match="Unknown pooling 'avg'"):
        model.to_embedding_model(pooling="avg")


def test_trust_remote_code_without_mrl_text(make_mlm, masked_batch, tmp_path):
    model = make_mlm()
    model.save_pretrained(tmp_path / "mlm")
    inputs = {k: v for k, v in masked_batch.items() if k != "labels"}
    torch.save({"inputs": inputs, "logits": model(**inputs, dim=8).logits}, tmp_path / "expected.pt")
    script = f"""
        import torch
        from transformers import AutoModelForMaskedLM
        model = AutoModelForMaskedLM.from_pretrained({str(tmp_path / "mlm")!r}, trust_remote_code=True).eval()
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert type(model).__name__ == "MatryoshkaForMaskedLM"
        torch.testing.assert_close(model(**expected["inputs"], dim=8).logits, expected["logits"])
        print("REMOTE-OK")
    """
    run_without_mrl_text(script, tmp_path)
