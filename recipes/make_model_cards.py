"""Regenerate `model_cards/`: the card of every model the recipes produce, rendered from the data stored beside it.

    python recipes/make_model_cards.py            # re-render every model_cards/<model>/ (README.md and the plot)
    python recipes/make_model_cards.py --check    # name the stale files and exit 1 (as the tests do)
    python recipes/make_model_cards.py --store-run outputs/minilm-chatterbot-matryoshka   # a finished recipe run
    python recipes/make_model_cards.py --store-online   # the online configs' cards, rebuilt from their YAML

Each `model_cards/<model>/` is the card part of the folder `save_pretrained` writes: the stored data, `config.json`
and `model_card_data.json` (from a real run of the recipe, or for an online config the data the recipe would record
before any result exists), and what the card code renders from it, `README.md` and the plot. Rendering is
`mrl-text card model_cards/<model>` (the same `write_card` that `save_pretrained` and `push_to_hub` call), so after
any change to the card code or template this command brings every card up to date. Everything a card shows comes
from the stored files, the versions, hardware and training time of the run included, never from this machine; the
usage snippets name the model by `model_id`, pinned in the card data to the folder the recipe saved to.
"""

import argparse
import filecmp
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from mrl_text import cli
from mrl_text.cards.card_data import (
    CARD_DATA_FILENAME,
    MatryoshkaModelCardData,
    display_name,
    is_local_path,
)

# Sibling modules of recipes/: a script's own folder is on sys.path when it runs (tests add recipes/ themselves).
from recipe_config import read_recipe

CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
STORED_FILES = ("config.json", CARD_DATA_FILENAME)  # the inputs; every other file in a card folder is rendered
# Compared byte for byte. PNG bytes depend on the matplotlib and FreeType versions (the file names its matplotlib
# version), so a plot is checked for being there, not for its bytes.
TEXT_SUFFIXES = {".md", ".json", ".txt", ".yaml"}
REGENERATE = "python recipes/make_model_cards.py"
GPU_SETTINGS = {"bf16": False, "fp16": False, "dataloader_pin_memory": True}  # training-argument defaults
# The online paper-like configs: the model they would download, and its config class in transformers, whose
# defaults are that model's architecture (offline, the config cannot be downloaded).
ONLINE_CONFIGS = {
    "bert_base_allnli.yaml": ("train_bert", "BertConfig"),
    "align_base.yaml": ("train_align", "AlignConfig"),
    "mlm_bert_base.yaml": ("pretrain_mlm", "BertConfig"),
}


def model_folders(cards_dir=CARDS_DIR):
    """Every card folder: a subfolder holding stored card data."""
    return sorted(path for path in Path(cards_dir).iterdir() if (path / CARD_DATA_FILENAME).is_file())


def render(folder):
    """Write the card of `folder` from its stored data: `mrl-text card <folder>`."""
    cli.main(["card", str(folder)])


def stale_files(cards_dir=CARDS_DIR):
    """What differs between the committed cards and a fresh rendering of their stored data: one line per file, with
    the command that regenerates it. Empty when every card is up to date."""
    problems = []
    for folder in model_folders(cards_dir):
        with tempfile.TemporaryDirectory() as scratch:
            fresh = Path(scratch) / folder.name
            fresh.mkdir()
            for name in STORED_FILES:
                if (folder / name).is_file():
                    shutil.copy(folder / name, fresh / name)
            render(fresh)
            written = {path.name for path in fresh.iterdir()}
            for name in sorted(written):
                committed = folder / name
                if not committed.is_file():
                    problems.append(f"{committed}: missing (the card code writes it)")
                elif committed.suffix in TEXT_SUFFIXES and not filecmp.cmp(committed, fresh / name, shallow=False):
                    problems.append(f"{committed}: differs from the card rendered from the stored data")
            problems += [f"{folder / name}: not written by the card code (left over)"
                         for name in sorted({path.name for path in folder.iterdir()} - written)]
    return [f"{problem}; regenerate with `{REGENERATE}`" for problem in problems]


def store_run(run_dir, cards_dir=CARDS_DIR):
    """Copy a finished recipe run's stored data (config.json, model_card_data.json) into `model_cards/<run name>/`
    and render it. The card names the model as `save_pretrained` did: by the folder it was saved to."""
    run_dir = Path(run_dir)
    for name in STORED_FILES:
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name}: not found; pass the output_dir of a finished recipe run.")
    folder = Path(cards_dir) / run_dir.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(portable_config(run_dir / "config.json"))
    data = MatryoshkaModelCardData.load(run_dir)
    data.model_id = data.model_id or (run_dir.as_posix() if not run_dir.is_absolute() else run_dir.name)
    data.save(folder)
    render(folder)
    if (run_dir / "README.md").is_file() and (run_dir / "README.md").read_text() != (folder / "README.md").read_text():
        print(f"note: {folder / 'README.md'} differs from the card the run wrote (the card code changed since)")
    return folder


def portable_config(path):
    """A saved config.json with every local `_name_or_path` (a folder on the machine that trained, e.g. a tower
    loaded from disk) replaced by that folder's name: the committed files name no path of one machine."""

    def scrub(value):
        if isinstance(value, dict):
            return {key: display_name(item) if key == "_name_or_path" and is_local_path(item) else scrub(item)
                    for key, item in value.items()}
        return value

    return json.dumps(scrub(json.loads(Path(path).read_text())), indent=2, sort_keys=True) + "\n"


def online_config(recipe_name, encoder_class, model_id, **matryoshka):
    """The config.json a recipe would save, with the downloaded encoder's config replaced by its class defaults."""
    import transformers

    from mrl_text import MatryoshkaConfig, MatryoshkaDualEncoderConfig

    encoder = getattr(transformers, encoder_class)()
    encoder._name_or_path = model_id  # what from_pretrained records: names the base model, as after a download
    if recipe_name == "train_align":
        return MatryoshkaDualEncoderConfig(encoder=encoder, **matryoshka)
    return MatryoshkaConfig(encoder=encoder, **matryoshka)


def online_text_card(yaml_path, encoder_class):
    """(config, card data) that train_bert.py records for `yaml_path` before its first evaluation: what the card of
    the model says with the arguments and datasets of the config, and no results, versions or training lines."""
    from mrl_text.cards.card_data import (
        base_model_id,
        describe_loss,
        training_hyperparameters,
    )
    from mrl_text.data import TRAINING_LAYOUTS
    from mrl_text.evaluation import RetrievalEvaluator, STSEvaluator

    import train_bert  # the recipe beside this script (imported here: it loads the trainer)

    settings = read_recipe(yaml_path)
    # Where there is no GPU, bf16/fp16 are refused and pinned memory is turned off: parsed off here, then set back
    # to what the config gives on the GPU machine it is written for.
    recipe, args = train_bert.parse_arguments(["--config", str(yaml_path), "--bf16", "false", "--fp16", "false"])
    for key, default in GPU_SETTINGS.items():
        setattr(args, key, settings.get(key, default))
    config = online_config(
        "train_bert", encoder_class, recipe.model_name_or_path, matryoshka_dimensions=recipe.matryoshka_dimensions,
        matryoshka_weights=recipe.matryoshka_weights, pooling=recipe.pooling, max_seq_length=args.max_seq_length,
    )
    held_out_task, held_out_card = train_bert.dataset_names(
        recipe.eval_data or recipe.train_data, recipe.eval_data is None
    )
    evaluator = STSEvaluator if recipe.eval_layout == "scored_pairs" else RetrievalEvaluator
    general_task, _, general_card = train_bert.GENERAL_CHECK
    columns = TRAINING_LAYOUTS["triplets" if recipe.train_layout == "nli" else recipe.train_layout]
    # The recipe's own loss builder (it reads only the model's config), so the card names the loss it would train.
    loss = train_bert.build_loss(recipe, config)
    data = MatryoshkaModelCardData(
        model_name=Path(args.output_dir).name,
        model_id=args.output_dir,
        base_model=base_model_id(config),
        base_model_name=None if base_model_id(config) else display_name(recipe.model_name_or_path),
        train_datasets=[{**train_bert.dataset_names(recipe.train_data, False)[1], "layout": recipe.train_layout,
                         "columns": list(columns)}],
        eval_datasets={recipe.eval_name or held_out_task: held_out_card, general_task: general_card},
        task_types={recipe.eval_name or held_out_task: evaluator.task_type, general_task: STSEvaluator.task_type},
        loss=describe_loss(loss),
        hyperparameters=training_hyperparameters(args, train_bert.build_size_schedule(recipe)),
        evaluation={"max_seq_length": args.max_seq_length} if args.max_seq_length else {},
    )
    return config, data


def online_image_text_card(yaml_path, encoder_class):
    """(config, card data) that train_align.py records for `yaml_path`, without results, versions or training lines."""
    from mrl_text.cards.card_data import describe_loss, non_default_arguments
    from mrl_text.evaluation.image_text import ImageTextRetrievalEvaluator
    from mrl_text.losses import ImageTextInfoNCELoss, MatryoshkaLoss

    import train_align

    recipe = train_align.parse_arguments(["--config", str(yaml_path)])
    config = online_config(
        "train_align", encoder_class, recipe.model, matryoshka_dimensions=recipe.matryoshka_dimensions
    )
    hub_id = recipe.model if display_name(recipe.model) == recipe.model else None
    # The loss reads the model's temperature only when called: a stand-in model is enough to describe it.
    loss = MatryoshkaLoss.from_config(config, ImageTextInfoNCELoss(SimpleNamespace(logit_scale=None)))
    data = MatryoshkaModelCardData(
        model_name=Path(recipe.output_dir).name,
        model_id=recipe.output_dir,
        base_model=hub_id,
        base_model_name=display_name(recipe.model),
        train_datasets=[{"name": display_name(recipe.dataset),
                         "id": recipe.dataset if display_name(recipe.dataset) == recipe.dataset else None}],
        eval_datasets={"retrieval": {"name": f"{recipe.dataset} (held out)"}},
        task_types={"retrieval": ImageTextRetrievalEvaluator.task_type},
        loss=describe_loss(loss),
        hyperparameters=non_default_arguments(recipe),
    )
    return config, data


def online_mlm_card(yaml_path, encoder_class):
    """(config, card data) that pretrain_mlm.py records for `yaml_path` before its first MLM evaluation."""
    from mrl_text.cards.card_data import MatryoshkaModelCardData, non_default_arguments

    import pretrain_mlm

    settings = read_recipe(yaml_path)
    recipe, args = pretrain_mlm.parse_arguments(["--config", str(yaml_path), "--bf16", "false", "--fp16", "false"])
    for key, default in GPU_SETTINGS.items():
        setattr(args, key, settings.get(key, default))
    # pretrain_mlm.build_model's config; BertConfig's default vocabulary is bert-base-uncased's tokenizer's
    config = online_config(
        "pretrain_mlm",
        encoder_class,
        recipe.encoder_config,
        max_seq_length=recipe.max_seq_length,
        matryoshka_dimensions=recipe.matryoshka_dimensions,
        matryoshka_weights=recipe.matryoshka_weights,
        efficient_heads=recipe.efficient_heads,
    )
    # as save_pretrained records it: the card tells an MLM model by it
    config.architectures = ["MatryoshkaForMaskedLM"]
    data = MatryoshkaModelCardData(model_name=Path(args.output_dir).name, model_id=args.output_dir,
                                   hyperparameters=non_default_arguments(args))
    pretrain_mlm.describe_pretraining(data, recipe, config.encoder, config.encoder.vocab_size)
    return config, data


def has_results(folder):
    data = MatryoshkaModelCardData.load(folder) if Path(folder).is_dir() else None
    return data is not None and data.results is not None and bool(data.results.rows)


def store_online(cards_dir=CARDS_DIR):
    """Rebuild the stored data of every online config's card from its YAML, then render them; a card stored from a
    real run of the config is left as it is."""
    builders = {"train_bert": online_text_card, "train_align": online_image_text_card, "pretrain_mlm": online_mlm_card}
    folders = []
    for config_name, (recipe_name, encoder_class) in ONLINE_CONFIGS.items():
        config, data = builders[recipe_name](CONFIGS_DIR / config_name, encoder_class)
        folder = Path(cards_dir) / data.model_name
        if has_results(folder):
            continue  # stored from a real run (--store-run): kept
        folder.mkdir(parents=True, exist_ok=True)
        config.to_json_file(folder / "config.json")  # as save_pretrained writes it, without the modeling code
        data.save(folder)
        render(folder)
        folders.append(folder)
    return folders


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="name the stale files (exit 1 when there are any)")
    action.add_argument("--store-run", metavar="DIR", help="store a finished recipe run's card data, then render it")
    action.add_argument("--store-online", action="store_true", help="rebuild the online configs' stored data")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_files()
        print("\n".join(problems) or f"every card in {CARDS_DIR} is up to date")
        return 1 if problems else 0
    if args.store_run:
        store_run(args.store_run)
        return 0
    if args.store_online:
        store_online()
        return 0
    for folder in model_folders():
        render(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
