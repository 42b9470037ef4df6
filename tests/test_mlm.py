"""MatryoshkaForMaskedLM: MLM from every prefix, tied decoder, save/load (Auto classes, remote code), conversion."""

import json
from pathlib import Path

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


@pytest.mark.slow
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


@pytest.mark.slow
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
    efficient_count, per_size_count = (
        sum(p.numel() for p in m.lm_head.transform.parameters()) for m in (efficient, tied)
    )
    assert efficient_count == 32 * 32 + 32 < per_size_count == (32 + 16 + 8 + 4) * 32 + 4 * 32


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
    word_embeddings = model.matryoshka.encoder.embeddings.word_embeddings.weight
    assert torch.equal(word_embeddings, mlm_state["embeddings.word_embeddings.weight"])
    with pytest.raises(ValueError, match="Unknown pooling 'avg'"):
        model.to_embedding_model(pooling="avg")


def test_card_of_a_masked_lm_says_fill_mask_and_how_to_use_it(make_mlm, tmp_path):
    """An MLM-pretrained folder is not an embedding model yet: its card must not advertise one (pipeline tag,
    sentence-transformers snippet) but show fill-mask usage and the way to embedding fine-tuning; the same holds when
    the card is rebuilt from the saved config alone."""
    from huggingface_hub import ModelCard

    from mrl_text.cards.card import build_card

    model = make_mlm()
    model.save_pretrained(tmp_path)
    for source in (model, MatryoshkaConfig.from_pretrained(tmp_path)):
        card = ModelCard(str(build_card(source, model_id="org/tiny-mlm")))
        assert card.data.pipeline_tag == "fill-mask" and "sentence-transformers" not in card.data.tags
        assert "AutoModelForMaskedLM.from_pretrained(\"org/tiny-mlm\")" in card.text
        assert "to_embedding_model()" in card.text and "SentenceTransformer(" not in card.text
    embedding_card = ModelCard(str(build_card(model.to_embedding_model(), model_id="org/tiny")))
    assert embedding_card.data.pipeline_tag == "sentence-similarity" and "SentenceTransformer(" in embedding_card.text


@pytest.mark.slow
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


@pytest.mark.slow
def test_auto_model_loads_the_embedding_model_of_an_mlm_folder_without_mrl_text(make_mlm, sentences, tmp_path):
    """`AutoModel` of an MLM folder is the embedding model its encoder gives, with or without mrl-text installed."""
    model = make_mlm()
    model.save_pretrained(tmp_path / "mlm")
    expected = model.to_embedding_model().encode(sentences, dim=8)
    torch.save({"texts": sentences, "embeddings": expected}, tmp_path / "expected.pt")
    script = f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "mlm")!r}, trust_remote_code=True).eval()
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert type(model).__name__ == "MatryoshkaModel", type(model).__name__
        torch.testing.assert_close(model.encode(expected["texts"], dim=8), expected["embeddings"])
        print("REMOTE-OK")
    """
    run_without_mrl_text(script, tmp_path)
    # the embedding model made from it saves as an embedding model (no masked-LM entry pointing at absent code)
    model.to_embedding_model().save_pretrained(tmp_path / "embedder")
    auto_map = json.loads((tmp_path / "embedder" / "config.json").read_text())["auto_map"]
    assert "AutoModelForMaskedLM" not in auto_map and auto_map["AutoModel"].endswith(".MatryoshkaModel")


@pytest.mark.slow
def test_matryoshka_trainer_trains_on_the_loss_the_model_returns(make_mlm, tiny_tokenizer, sentences, tmp_path):
    """MatryoshkaTrainer with transformers' MLM collator: no loss object, a step's loss is the model's own weighted sum
    over sizes, the size schedule drives the model's `smaller_sizes_scale`, and the loss falls."""
    from transformers import TrainerCallback

    from mrl_text import MatryoshkaTrainer, MatryoshkaTrainingArguments
    from mrl_text.training import SizeSchedule

    model = make_mlm(dims=[32, 16, 8], matryoshka_weights=[4.0, 1.0, 1.0])
    rows = [dict(tiny_tokenizer(s.lower(), return_token_type_ids=False)) for s in sentences] * 8
    collator = DataCollatorForLanguageModeling(tiny_tokenizer, mlm_probability=0.3)
    args = MatryoshkaTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=20, learning_rate=5e-3, use_cpu=True,
        report_to="none", save_strategy="no", disable_tqdm=True, seed=0, logging_steps=5,
    )
    scales = []

    class RecordScale(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            scales.append(model.smaller_sizes_scale)

    schedule = SizeSchedule(smaller_sizes_warmup_fraction=1.0)
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                                size_schedule=schedule, callbacks=[RecordScale()])
    assert trainer.loss is None
    torch.manual_seed(2)
    batch = collator(rows[:8])

    def step_loss():
        model.eval()
        with torch.no_grad():
            return trainer.compute_loss(model, batch)

    before = step_loss()
    with torch.no_grad():
        torch.testing.assert_close(before, model(**batch).loss)
    trainer.train()
    assert scales == pytest.approx([(step + 1) / 20 for step in range(20)]) and model.smaller_sizes_scale == 1.0
    assert step_loss() < 0.8 * before
    # beside the weighted sum (which rises as the smaller sizes ramp in), the log shows the full size's own loss
    logged = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logged) == 4 and all(list(log)[:2] == ["loss", "full_size_loss"] for log in logged), logged
    assert logged[-1]["full_size_loss"] < logged[0]["full_size_loss"]
    with torch.no_grad():
        out = model(**batch)
    full = F.cross_entropy(out.matryoshka_logits[0], batch["labels"][batch["labels"] != -100])
    torch.testing.assert_close(out.full_size_loss, full)
    with pytest.raises(ValueError, match="computes its own loss.*DataCollatorForLanguageModeling"):
        MatryoshkaTrainer(model=model, args=args, train_dataset=rows)


# recipes/pretrain_mlm.py


@pytest.fixture(scope="module")
def recipe():
    from .test_recipe import load_recipe

    return load_recipe("pretrain_mlm")


@pytest.fixture
def corpus(tmp_path, sentences):
    path = tmp_path / "corpus.tsv"
    rows = [s.lower() for s in sentences] * 8 + ["a dog is playing in the park", "the cat eats bread"] * 8
    path.write_text("text\n" + "".join(f"{row}\n" for row in rows))
    return path


def tiny_recipe_arguments(tokenizer_dir, corpus, out):
    return ["--tokenizer_name_or_path", str(tokenizer_dir), "--train_data", str(corpus), "--hidden_size", "32",
            "--num_hidden_layers", "2", "--num_attention_heads", "2", "--matryoshka_dimensions", "32", "16", "8",
            "--matryoshka_weights", "4", "1", "1", "--smaller_sizes_warmup_fraction", "0.5",
            "--max_seq_length", "16", "--heldout_fraction", "0.25", "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--use_cpu", "true", "--disable_tqdm", "true"]


def test_mlm_configs_parse(recipe):
    from .test_recipe import RECIPES

    demo, args = recipe.parse_arguments([])
    assert demo.train_data == "shared-corpus" and demo.hidden_size == 128 and demo.tokenizer_name_or_path is None
    assert "stsb" not in demo.corpus_sources and args.max_steps > 0 and args.save_strategy == "no"
    assert demo.matryoshka_weights == [4, 1, 1, 1] and demo.smaller_sizes_warmup_fraction == 1.0  # the chosen recipe
    online_config = str(RECIPES / "configs" / "mlm_bert_base.yaml")
    base, args = recipe.parse_arguments(["--config", online_config, "--bf16", "false"])
    assert base.encoder_config == "bert-base-uncased" and base.train_data == "wikimedia/wikipedia" and base.group_texts
    assert base.matryoshka_dimensions == [768, 384, 192, 96, 48, 24, 12] and args.per_device_train_batch_size == 128
    assert base.matryoshka_weights is None and base.smaller_sizes_warmup_fraction == 0.0  # the paper's equal weights


@pytest.mark.slow
def test_pretrain_recipe_smoke(recipe, tiny_tokenizer, corpus, tmp_path, capsys):
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "out"
    before, after = recipe.main(tiny_recipe_arguments(tmp_path / "tokenizer", corpus, out))
    assert list(before) == list(after) == [32, 16, 8]
    printed = capsys.readouterr().out
    assert "MLM accuracy before" in printed and "| 8 |" in printed
    assert (out / "mlm_accuracy.json").is_file() and not (out / "checkpoints").exists()
    # the card: MLM accuracy at every size, after (this model, in the model-index) and before (a comparison)
    from mrl_text.cards.card_data import MatryoshkaModelCardData

    rows = MatryoshkaModelCardData.load(out).results.rows
    assert {(r["model"], r["dim"]): round(100 * r["value"], 6) for r in rows} == {
        **{("random initialisation", d): round(v, 6) for d, v in before.items()},
        **{("out", d): round(v, 6) for d, v in after.items()}}
    card = (out / "README.md").read_text()
    assert "type: fill-mask" in card and "dim_8" in card and "not fine-tuned as an embedding model" in card
    assert "Steps: 2" in card and "`max_steps`: 2" in card and "'smaller_sizes_warmup_fraction': 0.5" in card
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert isinstance(model, MatryoshkaForMaskedLM) and model.config.matryoshka_dimensions == [32, 16, 8]
    # the demo config learns a new vocabulary on the training texts; the model is sized to it and saved with it
    assert model.tokenizer is not None
    assert model.config.encoder.vocab_size == len(model.tokenizer) < len(tiny_tokenizer)
    held_out = recipe.tokenize(recipe.load_texts(recipe.parse_arguments(["--train_data", str(corpus)])[0])[0],
                               "text", model.tokenizer, 16)
    batches = recipe.masked_batches(held_out, model.tokenizer, 0.15, seed=3)
    assert set(recipe.masked_lm_accuracy(model, batches)) == {32, 16, 8}


def test_pretrain_recipe_grouped_texts(recipe, tiny_tokenizer, corpus):
    texts, column = recipe.load_texts(recipe.parse_arguments(["--train_data", str(corpus)])[0])
    blocks = recipe.tokenize(texts, column, tiny_tokenizer, 16, group=True)
    assert all(len(ids) == 16 for ids in blocks["input_ids"])
    assert all(ids[0] == tiny_tokenizer.cls_token_id and ids[-1] == tiny_tokenizer.sep_token_id
               for ids in blocks["input_ids"])


def test_pretrain_recipe_bad_input(recipe, tiny_tokenizer, corpus, tmp_path):
    from transformers import BertTokenizerFast

    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    arguments = tiny_recipe_arguments(tmp_path / "tokenizer", corpus, tmp_path / "out")
    no_text = tmp_path / "pairs.tsv"
    no_text.write_text("sentence1\tsentence2\na dog\ta cat\n")
    missing = r"no text column 'text' \(columns: \['sentence1', 'sentence2'\]\).*--text_column"
    with pytest.raises(ValueError, match=missing):
        recipe.main(arguments + ["--train_data", str(no_text)])
    with pytest.raises(ValueError, match=r"size=64 is larger than the embedding size 32"):
        recipe.main(arguments + ["--matryoshka_dimensions", "64", "32"])
    vocab = tiny_tokenizer.get_vocab()
    BertTokenizerFast(vocab=vocab, mask_token=None).save_pretrained(tmp_path / "no-mask")
    with pytest.raises(ValueError, match="has no mask token"):
        recipe.main(arguments + ["--tokenizer_name_or_path", str(tmp_path / "no-mask")])


def test_new_vocabulary_keeps_the_special_tokens(recipe, tiny_tokenizer, sentences, capfd):
    small = recipe.retrain_tokenizer(tiny_tokenizer, [s.lower() for s in sentences] * 20, 80)
    assert capfd.readouterr() == ("", "")  # the tokenizers library's progress, off a terminal, is blank lines
    assert len(small) <= 80 and small.mask_token == "[MASK]" and small.pad_token_id is not None
    assert small("the dog runs")["input_ids"][0] == small.cls_token_id


@pytest.mark.ddp
@pytest.mark.slow
def test_quality_mlm_regime_end_to_end(tiny_tokenizer, tmp_path):
    """`python benchmarks/quality.py mlm` on a tiny data folder, so a long run cannot fail on a bug."""
    import json
    import random
    import sys

    from .conftest import WORDS, load_module

    rng = random.Random(0)

    def write(path, header, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))

    def sentence():
        return " ".join(rng.choice(WORDS) for _ in range(6))

    data = tmp_path / "data"
    files = {"snli": (("dev", "test"), ["premise", "hypothesis", "label"]),
             "flickr8k_captions": (("train", "dev", "test"), ["caption"]),
             "emotion": (("train", "validation", "test"), ["text"]),
             "banking77": (("train", "test"), ["text", "label"]), "trec": (("train", "test"), ["text"]),
             "mrpc": (("train", "test"), ["sentence1", "sentence2"])}
    for folder, (splits, columns) in files.items():
        for split in splits:
            rows = [[sentence() for _ in columns] for _ in range(30)]
            if folder == "banking77":
                rows = [[r[0], f"intent{i % 3}"] for i, r in enumerate(rows)]
            if folder == "snli":
                pairs = (("entailment", lambda r: r[1]), ("contradiction", lambda r: sentence()))
                rows = [[r[0], hypothesis(r), label] for r in rows for label, hypothesis in pairs]
            write(data / folder / f"{split}.tsv", columns, rows)
    for split in ("dev", "test"):
        write(data / "stsb" / f"{split}.tsv", ["sentence1", "sentence2", "score"],
              [(sentence(), sentence(), i % 5) for i in range(30)])
    (data / "scifact").mkdir()
    documents = [json.dumps({"_id": f"d{i}", "title": "", "text": sentence()}) + "\n" for i in range(20)]
    (data / "scifact" / "corpus.jsonl").write_text("".join(documents))
    (data / "scifact" / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": sentence()}) + "\n"
                                                            for i in range(5)))
    qrels = [(f"q{i}", f"d{i}", 1) for i in range(5)]
    write(data / "scifact" / "qrels" / "test.tsv", ["query-id", "corpus-id", "score"], qrels)
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    quality = load_module(benchmarks / "quality.py")
    common = ["mlm", "--model", str(tmp_path / "tokenizer"), "--data", str(data), "--results", str(tmp_path), "--out",
              str(tmp_path / "out"), "--sizes", "32,16,8", "--heads", "2", "--steps", "3", "--refit-steps", "2",
              "--vocab-size", "0", "--limit-train", "200", "--limit-eval", "20", "--finetune-rows", "16",
              "--batch-size", "8", "--probe-train", "40", "--mlm-probability", "0.3"]
    report = quality.main(common)
    assert set(report["runs"]) == {"mrl", "plain", "ff16", "ff8"}
    assert all(len(runs) == 1 for runs in report["runs"].values())  # one run per seed
    assert set(report["runs"]["plain"][0]["refit"]) == {32, 16, 8}
    for method in ("mrl", "plain"):  # every pretrained encoder fine-tuned and scored at every size on every task
        tuned = report["runs"][method][0]["finetuned"]
        assert all(set(tuned[task][when]) == {32, 16, 8} for task in ("stsb", "scifact", "banking77")
                   for when in ("before", "after"))
    markdown = (tmp_path / "quality_mlm.md").read_text()
    assert "| 8 |" in markdown and "most-frequent-token baseline" in markdown and "MRL within 1.0 of FF-8" in markdown
    assert "30% masked" in markdown and "banking77 after fine-tuning: MRL > plain at 16" in markdown
    # MRL is scored with the heads it trained, the plain prefixes with heads fit on the frozen encoder
    table = next(line for line in markdown.splitlines() if line.startswith("| 16 |")).split("|")
    assert float(table[2]) == round(report["runs"]["mrl"][0]["own_heads"][16], 2)
    assert float(table[4]) == round(report["runs"]["plain"][0]["refit"][16], 2)
    pretrain_seconds = {method: report["runs"][method][0]["pretrain_s"] for method in ("mrl", "plain")}
    # a recipe study over two seeds: validation data only (held-out sentences after the test ones, STS-B dev, a
    # slice of Banking77 train; no SciFact), MRL recipes and fine-tuning learning rates side by side, seed 0's
    # encoders above reused
    report = quality.main(common + ["--eval-split", "val", "--methods", "mrl,mrl_w4_ramp50,plain", "--report-name",
                                    "mlm_val", "--finetune-lrs", "2e-3,1e-3", "--seeds", "2",
                                    "--finetune-warmup-fraction", "0", "--workers", "2"])  # seeds in two processes
    assert set(report["runs"]) == {"mrl", "mrl_w4_ramp50", "plain"}
    assert all(len(runs) == 2 for runs in report["runs"].values())
    assert {method: report["runs"][method][0]["pretrain_s"] for method in ("mrl", "plain")} == pretrain_seconds
    # seed 1: its own initial weights, masks and batch order, so another encoder
    before = [run["finetuned"]["stsb"]["before"] for run in report["runs"]["mrl"]]
    assert before[0] != before[1]
    assert set(report["runs"]["mrl"][1]["finetuned_by_lr"]) == {2e-3, 1e-3}
    assert set(report["runs"]["plain"][1]["finetuned"]) == {"rows", "stsb", "banking77"}
    markdown = (tmp_path / "quality_mlm_val.md").read_text()
    assert "| size | MRL | mrl_w4_ramp50 | FF-d |" in markdown and "20 held out (val)" in markdown
    assert "2 seeds, mean ± sd" in markdown and "weight 1 each, from the first step" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 16 |")).split("|")
    refit = [run["refit"][16] for run in report["runs"]["mrl"]]  # the last column: MRL's heads refit
    assert row[-2].strip() == f"{sum(refit) / 2:.2f} ± {abs(refit[0] - refit[1]) / 2 ** 0.5:.2f}"
    assert "STS-B dev Spearman" in markdown and "Fine-tuning learning rates side by side" in markdown
    assert "| 0.001 |" in markdown and "| 0.002 |" in markdown
    report = quality.main(common + ["--no-finetune", "--report-name", "mlm_pretraining_only"])  # encoders reused
    assert "finetuned" not in report["runs"]["mrl"][0] and "MRL within 1.0 of FF-8" in str(report["targets"])
    assert "fine-tuning" not in (tmp_path / "quality_mlm_pretraining_only.md").read_text()
    with pytest.raises(SystemExit, match="--finetune-warmup-fraction 2.0 must be a share of the steps"):
        quality.main(common + ["--finetune-warmup-fraction", "2"])
    with pytest.raises(SystemExit, match="--methods names 'mrl_fast'"):
        quality.main(["mlm", "--model", str(tmp_path / "tokenizer"), "--data", str(data), "--methods", "mrl,mrl_fast"])


def test_quality_mlm_recipes_and_their_nesting():
    """MRL recipes of the mlm regime: the full size's weight, the smaller sizes' warmup (the trainer's schedule)."""
    import argparse
    import sys

    from .conftest import load_module

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    mlm = load_module(benchmarks / "quality_mlm.py")
    args = argparse.Namespace(mrl_full_weight=2.0, smaller_sizes_warmup_fraction=0.5)
    assert mlm.mrl_recipe("mrl", args) == (2.0, 0.5) and mlm.mrl_recipe("mrl_paper", args) == (1.0, 0.0)
    assert mlm.mrl_recipe("mrl_w4_ramp50", args) == (4.0, 0.5) and mlm.mrl_recipe("plain", args) is None
    sizes = [32, 16, 8]
    assert mlm.method_nesting("mrl", sizes, args) == (sizes, [2.0, 1.0, 1.0], 0.5)
    assert mlm.method_nesting("mrl_w4_ramp50", sizes, args) == (sizes, [4.0, 1.0, 1.0], 0.5)
    assert mlm.method_nesting("plain", sizes, args) == ([32], None, 0.0)
    assert mlm.method_nesting("ff16", sizes, args) == ([32, 16], [0.0, 1.0], 0.0)


@pytest.mark.parametrize("flag", ["--mlm_probability", "--eval_mlm_probability"])
def test_masking_rates_must_be_fractions(recipe, flag):
    with pytest.raises(SystemExit, match=f"{flag} 1.5 is not a fraction"):
        recipe.parse_arguments([flag, "1.5"])


def test_recipe_warmup_must_be_a_share_of_the_steps(recipe):
    with pytest.raises(SystemExit, match="--smaller_sizes_warmup_fraction 2.0 is not a share of the steps"):
        recipe.parse_arguments(["--smaller_sizes_warmup_fraction", "2"])


def test_quality_mlm_keeps_the_learnt_tokenizer_for_reused_encoders(tiny_tokenizer, sentences, tmp_path):
    """The WordPiece trainer breaks frequency ties in a per-process order: a second run must reuse the first run's
    tokenizer (and a pretrained encoder is only reused with the tokenizer it was trained with)."""
    import argparse
    import sys

    from .conftest import load_module

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    mlm = load_module(benchmarks / "quality_mlm.py")
    args = argparse.Namespace(out=str(tmp_path), vocab_size=80)
    texts = [s.lower() for s in sentences] * 20
    first = mlm.learnt_tokenizer(args, tiny_tokenizer, texts)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1 and len(first) <= 80
    again = mlm.learnt_tokenizer(args, tiny_tokenizer, texts)
    assert again.get_vocab() == first.get_vocab()
    mlm.learnt_tokenizer(args, tiny_tokenizer, texts[:50])  # other sentences: a tokenizer of their own
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2
