"""`MatryoshkaModel.freeze_layers`: the bottom of the encoder frozen (no gradient, no dropout), the top trained."""

import pytest
import torch


def test_frozen_bottom_layers_get_no_gradient_and_no_dropout(make_model, tiny_tokenizer, sentences):
    model = make_model()
    for module in model.modules():  # a large dropout, so that a module left in train mode would show it
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    layers = model.encoder.encoder.layer
    assert model.freeze_layers(1) is model
    model.train()
    assert not model.encoder.embeddings.training and not layers[0].training and layers[1].training
    assert not any(p.requires_grad for p in [*model.encoder.embeddings.parameters(), *layers[0].parameters()])
    assert all(p.requires_grad for p in layers[1].parameters())
    inputs = tiny_tokenizer(sentences[:3], padding=True, return_tensors="pt")
    first = [model(**inputs, output_hidden_states=True).hidden_states[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # the frozen layer runs without dropout while the model trains
    outputs = model(**inputs, output_hidden_states=True)
    assert not torch.equal(outputs.hidden_states[2], model(**inputs, output_hidden_states=True).hidden_states[2])
    outputs.full_embeddings.sum().backward()
    query = [layer.attention.self.query.weight for layer in layers]
    assert query[0].grad is None and query[1].grad is not None
    model.freeze_layers(0)
    assert all(p.requires_grad for p in model.parameters()) and model.encoder.embeddings.training


@pytest.mark.parametrize("bad", [-1, 3, 1.5, True])
def test_freeze_layers_refuses_counts_outside_the_encoder(make_model, bad):
    with pytest.raises(ValueError, match=r"the encoder has 2 layers; freeze an integer number of them from 0"):
        make_model().freeze_layers(bad)
