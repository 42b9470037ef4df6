"""Recipe arguments: dataclasses parsed by `HfArgumentParser`, with `--config file.yaml` as the base and
command-line flags overriding it (shared by train_bert.py and train_align.py)."""

import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser


def read_recipe(path):
    """A recipe YAML file as a dict of settings, with clear errors for a missing file or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such recipe config (see recipes/configs/).")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping of settings, got {type(recipe).__name__}.")
    return recipe


def parse_arguments(dataclass_types, default_config, argv=None, script="the recipe"):
    """Instances of `dataclass_types` from `--config file.yaml` (default `default_config`) and flags in `argv`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = Path(default_config)
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise ValueError("--config needs a YAML file, e.g. --config recipes/configs/bert_base_allnli.yaml")
        config_path = Path(argv[at + 1])
        del argv[at : at + 2]
    values = read_recipe(config_path)
    parser = HfArgumentParser(dataclass_types)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config_path}: unknown option(s) {unknown}; see `python {script} --help`.")
    parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)
