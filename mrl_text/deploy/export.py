"""Standard-format export for serving engines: a folder that loads with no remote code and no mrl-text.

`export_model(model, path)` writes the wrapped encoder as a model of its own type (a BERT stays a BERT), with
`is_matryoshka: true` and `matryoshka_dimensions` in its config.json (the fields vLLM reads to accept
`dimensions=`), and the sentence-transformers files that rebuild `MatryoshkaModel.encode` from built-in
modules only: Transformer -> Pooling [-> Dense for `projection_dim`] [-> Normalize].

The module files use the layout and keys that every reader understands: sentence-transformers 2.x to 6.x
(6.x still reads them and renames the keys on load), vLLM, Text Embeddings Inference and Infinity. The keys that
sentence-transformers 6 itself writes (`embedding_dimension`, `module_input_name`, ...) are refused by the
readers of the older layout, so they are not written here.

Calibrated int8/uint8 ranges (`model.calibrate_quantization`) are kept in config.json as `quantization_ranges`
(`{"64": [[minima], [maxima]], ...}`); `exported_ranges(folder, dim)` reads them back, and quantizing the folder's
re-normalized prefix with them (mrl_text.models.quantization.quantize, or sentence-transformers'
`quantize_embeddings(..., ranges=)`) gives the codes of `model.encode(texts, dim=dim, precision="int8")`.

`format="onnx"` adds `onnx/model.onnx` (the encoder's token states), the file sentence-transformers'
`backend="onnx"` and optimum's `ORTModelForFeatureExtraction` load from such a folder.
"""

import copy
import importlib.util
import json
import os
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from ..file_utils import staged_folder
from ..models.quantization import check_precision, model_ranges

EXPORT_FORMATS = ("sentence-transformers", "onnx")
# Our pooling modes -> the boolean keys of a sentence-transformers Pooling config.
POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "last": "pooling_mode_lasttoken",
}
ALL_POOLING_KEYS = (*POOLING_KEYS.values(), "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
MODULE_TYPES = {  # the class paths every sentence-transformers release (2.x to 6.x) resolves
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}
DENSE_WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = os.path.join("onnx", "model.onnx")


ONNX_PACKAGES = ("onnx", "onnxruntime")  # the `export` extra: the exporter needs onnx, checking the graph onnxruntime


def check_format(format):
    """Raise ValueError for an unknown format, ImportError naming the extra when `format` needs packages that are not
    installed: cheap checks, made before any model is loaded or any file written."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    if format == "onnx":
        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise ImportError(
                f"format='onnx' needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                "installed: pip install 'mrl-text[export]' (from a clone: pip install -e '.[export]')."
            )


def check_apart(source, target):
    """Raise ValueError when the export folder `target` is the model folder `source`, lies inside it or holds it:
    writing there would replace the model being exported (or nest the export in it)."""
    if source is None or not Path(source).is_dir():
        return  # a Hub id or an in-memory model: nothing on disk to protect
    source, target = Path(source).resolve(), Path(target).resolve()
    if source == target or source in target.parents or target in source.parents:
        relation = "is" if source == target else "is inside" if source in target.parents else "contains"
        raise ValueError(
            f"The output folder {target} {relation} the model folder {source}; exporting there would replace the "
            "model being exported. Choose an output folder outside it (e.g. a sibling folder)."
        )


def check_exportable(model, format="sentence-transformers"):
    """Raise ValueError naming the reason when `model` cannot be written as `format` with built-in modules only
    (ImportError when the format's packages are missing)."""
    check_format(format)
    config = getattr(model, "config", None)
    kind = type(model).__name__
    if getattr(config, "model_type", None) == "matryoshka_dual_encoder":
        raise ValueError(
            f"{kind} is an image-text dual encoder: sentence-transformers has no built-in module for its two towers, "
            f"so it cannot be exported as {format!r}. It supports the mrl-text format only: "
            "model.save_pretrained(path) (loads with `import mrl_text`, or with trust_remote_code=True)."
        )
    if not (hasattr(model, "encoder") and hasattr(config, "matryoshka_dimensions") and hasattr(config, "pooling")):
        inner = getattr(model, "matryoshka", None)
        hint = (
            " Export its embedding model instead: export_model(model.matryoshka, path)." if inner is not None else ""
        )
        raise ValueError(
            f"{kind} is not a MatryoshkaModel; only embedding models can be exported as {format!r}.{hint}"
        )
    if getattr(model, "adaptor", None) is not None:
        raise ValueError(
            f"This model has an adaptor ({type(model.adaptor).__name__}) after its encoder; sentence-transformers' "
            "built-in modules (Transformer, Pooling, Dense, Normalize) cannot express it, so a standard folder would "
            "not give this model's embeddings. Save it with model.save_pretrained(path) instead."
        )
    encoder_config = model.encoder.config
    model_type = encoder_config.model_type
    if model_type not in CONFIG_MAPPING_NAMES or getattr(encoder_config, "auto_map", None):
        raise ValueError(
            f"Encoder type {model_type!r} is not built into transformers (it needs remote code), so no engine "
            "loads it as a standard sentence-transformers Transformer module; export needs a built-in encoder type "
            "such as bert, roberta, xlm-roberta, mpnet or modernbert."
        )
    standard_class = MODEL_MAPPING_NAMES.get(model_type)
    if encoder_config.is_encoder_decoder or standard_class != type(model.encoder).__name__:
        raise ValueError(
            f"Encoder {type(model.encoder).__name__} ({model_type!r}) is not what AutoModel builds for its config "
            f"({standard_class}), so sentence-transformers' Transformer module would load "
            "a different model; export supports single-tower text encoders (bert, roberta, xlm-roberta, mpnet, ...)."
        )
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(
            "This model has no tokenizer, and an exported folder must carry one; set "
            "`model.tokenizer = AutoTokenizer.from_pretrained(...)` first."
        )


def export_model(model, path, format="sentence-transformers", overwrite=False, precisions=None):
    """Write `model` to `path` as a standard model of its encoder's type, loadable without remote code.

    Args:
        model: a [`MatryoshkaModel`] (with its tokenizer).
        path: the output folder. It must not exist or be empty unless `overwrite=True`.
        format (`str`): `"sentence-transformers"` (encoder weights, config, tokenizer, sentence-transformers files,
            model card) or `"onnx"` (the same plus `onnx/model.onnx`).
        overwrite (`bool`): replace a non-empty folder. The new folder is written beside it and swapped in by
            renames, so a failed export leaves the old folder as it was.
        precisions (`list[str]`, *optional*): the precisions the folder must serve. int8/uint8 need the model's
            ranges at every size (trained by `QuantizationAwareLoss` or measured by `calibrate_quantization`): an
            export without them fails before anything is written, instead of a folder whose users would quantize
            with ranges of their own.

    Returns:
        `pathlib.Path` of the folder.

    Raises:
        ValueError: for models built-in sentence-transformers modules cannot express (dual encoders, adaptors,
            encoder types without a standard Transformer module), unknown formats, unknown precisions, int8/uint8
            requested of a model without ranges.
        FileExistsError: when `path` holds files and `overwrite` is False.
        ImportError: `format="onnx"` without onnx / onnxruntime (the `export` extra).
    """
    check_exportable(model, format)
    check_served_precisions(model.config, precisions)
    target = Path(path)
    check_apart(getattr(model, "name_or_path", None) or None, target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} is a file; pass a folder path to export into.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{target} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it, or choose "
            "another folder."
        )
    # Written beside the target and renamed into place (a staging folder a killed export left is removed here); the
    # card names the folder the user asked for, not the staging folder.
    with staged_folder(target, kind="export") as staging:
        write_folder(model, staging, format, repo_id=folder_id(target))
    return target


def folder_id(path):
    """How a card names a local folder: the path as given when relative, else the folder's name only (a card does
    not record this machine's absolute paths)."""
    path = Path(path)
    return path.name if path.is_absolute() else path.as_posix()


def standard_state_dict(encoder):
    """The encoder's weights plus zeros for the modules that `AutoModel` builds for its config and the encoder does
    not have (BERT's pooler, dropped by `add_pooling_layer=False`): the saved folder is then exactly what `AutoModel`
    loads, with no "LOAD REPORT ... MISSING ... newly initialized" warning. The pooler is not used by mean/CLS pooling
    in sentence-transformers or by serving engines; zeros say plainly that it was never trained."""
    from transformers import AutoModel

    own = encoder.state_dict()
    with torch.device("meta"):
        standard = AutoModel.from_config(encoder.config)
    missing = {k: v for k, v in standard.state_dict().items() if k not in own}
    if not missing:
        return None
    reference = next(iter(own.values()))
    return {**own, **{k: torch.zeros(v.shape, dtype=reference.dtype, device=reference.device) for k, v in
                      missing.items()}}


def check_served_precisions(config, precisions):
    """Refuse `precisions` (an export's promise) that the model's config cannot keep: unknown names, and int8/uint8
    at a size without full-depth ranges (the exported folder runs every layer, so it carries those only)."""
    for precision in [precisions] if isinstance(precisions, str) else precisions or ():
        check_precision(precision)
        for dim in config.matryoshka_dimensions:
            try:
                model_ranges(config, dim, precision)
            except ValueError as error:
                raise ValueError(
                    f"export precisions={precision!r}: {error} Or train it with quantization in the loop "
                    f"(`QuantizationAwareLoss(..., precisions=[..., {precision!r}])`: the ranges are saved at the end "
                    f"of training). Or leave {precision!r} out of precisions."
                ) from None


def write_folder(model, directory, format="sentence-transformers", repo_id=None):
    """Write every file of the export into the existing folder `directory` (no checks; see `export_model`)."""
    directory = Path(directory)
    config = model.config
    model.encoder.save_pretrained(directory, safe_serialization=True, state_dict=standard_state_dict(model.encoder))
    encoder_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    encoder_config["is_matryoshka"] = True
    encoder_config["matryoshka_dimensions"] = list(config.matryoshka_dimensions)
    ranges = full_depth_ranges(config)
    if ranges:
        # The calibrated int8/uint8 ranges travel too, so the exported model's embeddings quantize to the same codes
        # as `model.encode(precision="int8")` (see the card's "Quantized codes").
        encoder_config["quantization_ranges"] = ranges
    write_json(directory / "config.json", encoder_config)
    model.tokenizer.save_pretrained(directory)
    for name, content in sentence_transformers_files(model).items():
        write_json(directory / name, content)
    if model.projection is not None:
        from safetensors.torch import save_file

        state = {
            f"linear.{k}": v.detach().float().cpu().contiguous() for k, v in model.projection.state_dict().items()
        }
        save_file(state, str(directory / "2_Dense" / DENSE_WEIGHTS_FILE), metadata={"format": "pt"})
    if format == "onnx":
        export_onnx(model.encoder, model.tokenizer, directory / ONNX_FILE)
    (directory / "README.md").write_text(model_card(model, repo_id or directory.name), encoding="utf-8")


def write_json(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def sentence_transformers_files(model):
    """{relative path: json content} of the sentence-transformers files for `model`."""
    config = model.config
    hidden = model.encoder.config.hidden_size
    modules = [("Transformer", "", None)]
    pooling = {"word_embedding_dimension": hidden, **{key: False for key in ALL_POOLING_KEYS}, "include_prompt": True}
    pooling[POOLING_KEYS[config.pooling]] = True
    modules.append(("Pooling", "1_Pooling", pooling))
    if model.projection is not None:
        dense = {"in_features": hidden, "out_features": config.projection_dim,
                 "bias": model.projection.bias is not None, "activation_function": "torch.nn.modules.linear.Identity"}
        modules.append(("Dense", "2_Dense", dense))
    if config.normalize:
        modules.append(("Normalize", f"{len(modules)}_Normalize", {}))
    files = {
        "modules.json": [
            {"idx": i, "name": str(i), "path": path, "type": MODULE_TYPES[kind]}
            for i, (kind, path, _) in enumerate(modules)
        ]
    }
    for _, path, module_config in modules[1:]:
        files[f"{path}/config.json"] = module_config
    max_length = config.max_seq_length or tokenizer_limit(model.tokenizer, model.encoder.config)
    files["sentence_bert_config.json"] = {"max_seq_length": max_length, "do_lower_case": False}
    files["config_sentence_transformers.json"] = {
        "__version__": library_versions(),
        "model_type": "SentenceTransformer",
        "prompts": getattr(config, "prompts", None) or {},
        "default_prompt_name": getattr(config, "default_prompt_name", None),
        "similarity_fn_name": getattr(config, "similarity_fn_name", None) or "cosine",
        "truncate_dim": config.truncate_dim,
    }
    return files


def full_depth_ranges(config):
    """The calibrated ranges of the full depth (keys `"64"`): an exported model runs every layer, so the ranges of
    shallower depths (`"64/layers=3"`) do not travel."""
    return {
        key: value for key, value in (getattr(config, "quantization_ranges", None) or {}).items() if "/" not in key
    }


def exported_ranges(folder, dim, precision="int8"):
    """The `(2, dim)` int8/uint8 ranges an exported folder's config.json keeps at size `dim` (None for float and bit
    codes); an error that says to calibrate (and export again) when the folder has none at that size."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return model_ranges(SimpleNamespace(quantization_ranges=config.get("quantization_ranges")), int(dim), precision)


def tokenizer_limit(tokenizer, encoder_config):
    """The longest input `encode` sees: the tokenizer's limit, capped by the encoder's position table."""
    limits = [getattr(tokenizer, "model_max_length", None), getattr(encoder_config, "max_position_embeddings", None)]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else None


def library_versions():
    """The versions that wrote the weights. sentence-transformers' own version is left out on purpose: these files
    use the layout every release reads, and older readers warn about a "model created with a newer version"."""
    import transformers

    return {"transformers": transformers.__version__, "pytorch": torch.__version__}


def onnx_inputs(encoder, tokenizer):
    """Names and example tensors of the encoder's token inputs (optimum's names: input_ids, attention_mask, ...)."""
    import inspect

    batch = tokenizer(
        ["an example sentence", "a longer example sentence to export"], padding=True, return_tensors="pt"
    )
    accepted = inspect.signature(encoder.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in batch and n in accepted]
    return names, tuple(batch[n] for n in names)


class TokenStates(torch.nn.Module):
    """The encoder as a function of positional token tensors to `last_hidden_state` (what the exporter traces)."""

    def __init__(self, encoder, names):
        super().__init__()
        self.encoder = encoder
        self.names = names

    def forward(self, *tensors):
        return self.encoder(**dict(zip(self.names, tensors)), return_dict=True).last_hidden_state


def export_onnx(encoder, tokenizer, onnx_path, opset_version=17):
    """Write the encoder's token-state graph to `onnx_path` with dynamic batch and sequence axes."""
    names, example = onnx_inputs(encoder, tokenizer)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    graph = TokenStates(copy.deepcopy(encoder).float().cpu(), names).eval()
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in [*names, "last_hidden_state"]}
    # The TorchScript exporter: seconds instead of a minute for the dynamo one, the same graph for these encoders.
    # Its tracer warns about shape checks in transformers' mask code; tests/test_export.py checks other shapes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")  # indices here are >= 0
        torch.onnx.export(
            graph, example, str(onnx_path), input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
            opset_version=opset_version, dynamo=False,
        )
    return onnx_path


def model_card(model, model_id):
    """README.md of an exported folder: what it is, its sizes, and how to ask each engine for a size."""
    config = model.config
    dims = list(config.matryoshka_dimensions)
    small = dims[-1] if len(dims) == 1 else dims[len(dims) // 2]
    default = config.truncate_dim or config.embedding_size
    encoder_type = model.encoder.config.model_type
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags:
- sentence-transformers
- feature-extraction
- matryoshka
- mrl-text
---

# {model_id}

A Matryoshka embedding model (Kusupati et al., 2022, https://arxiv.org/abs/2205.13147) trained with
mrl-text: the first `d` coordinates of its embedding are an embedding too, for every `d` in
its trained sizes **{dims}**. Re-normalize a prefix before comparing it with a dot product (cosine similarity
does not care).

This folder is a standard `{encoder_type}` model with sentence-transformers files made of built-in modules only:
it loads without `trust_remote_code` and without mrl-text. `config.json` carries `is_matryoshka: true` and
`matryoshka_dimensions`, which serving engines read. Default output size: {default}.

## sentence-transformers

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{model_id}", truncate_dim={small})  # or slice: model.encode(texts)[:, :{small}]
{st_encode_lines(config, small)}
```

## Infinity (OpenAI-compatible server)

```bash
infinity_emb v2 --model-id {model_id} --host 127.0.0.1 --port 7997
```

## vLLM (OpenAI-compatible server, GPU)

```bash
vllm serve {model_id} --runner pooling
```

## Ask a server for a size

```python
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:7997", api_key="unused")  # vLLM: http://127.0.0.1:8000/v1
response = client.embeddings.create(model="{model_id}", input=["a sentence"], dimensions={small})
```

Infinity returns the first `{small}` coordinates of the unit-length full embedding without re-normalizing them, and
accepts any size from 1 to {config.embedding_size}; vLLM accepts only the sizes in `matryoshka_dimensions`.
{quantized_codes_section(config)}"""


def st_encode_lines(config, small):
    """The card's sentence-transformers `encode` line, true to what it returns: `truncate_dim` slices after the
    model's Normalize module, so a prefix is unit length only when `encode` re-normalizes it."""
    if config.normalize:
        return (
            "# truncate_dim cuts the unit-length embedding, so a prefix is shorter than 1;\n"
            f"# normalize_embeddings=True re-normalizes it (what mrl-text's encode(texts, dim={small}) gives)\n"
            'embeddings = model.encode(["a sentence", "another one"], normalize_embeddings=True)'
            f"  # shape (2, {small}), unit length"
        )
    return (
        f'embeddings = model.encode(["a sentence", "another one"])  # shape (2, {small}), not normalized '
        "(this model does not normalize)"
    )


def quantized_codes_section(config):
    """The card's "Quantized codes" section when the model was calibrated (else empty): how to make, from this
    folder alone, the int8 codes mrl-text's `encode(precision="int8")` makes."""
    ranges = full_depth_ranges(config)
    if not ranges:
        return ""
    sizes = sorted((int(d) for d in ranges), reverse=True)
    size = sizes[len(sizes) // 2]
    normalize = ", normalize_embeddings=True" if config.normalize else ""
    return f"""
## Quantized codes (int8 / uint8)

`config.json` keeps the calibrated per-coordinate ranges of sizes {sizes} (`quantization_ranges`: minima, maxima).
Quantizing the {"re-normalized " if config.normalize else ""}prefix with them gives the codes of mrl-text's
`encode(texts, dim={size}, precision="int8")`:

```python
import json

import numpy as np
from sentence_transformers.util.quantization import quantize_embeddings

ranges = np.array(json.load(open("config.json"))["quantization_ranges"]["{size}"])  # this folder's config.json
prefix = model.encode(texts, truncate_dim={size}{normalize})
codes = quantize_embeddings(prefix, "int8", ranges=ranges)  # (len(texts), {size}) int8
```
"""


def push_exported_to_hub(model, repo_id, format="sentence-transformers", *, private=None, token=None, revision=None,
                         commit_message=None, create_pr=False):
    """Export `model` to a temporary folder and upload it to the Hub repository `repo_id` in one commit.

    The card's usage snippets name `repo_id`. Returns the `CommitInfo` of `HfApi.upload_folder`.
    """
    from huggingface_hub import HfApi

    check_exportable(model, format)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as work_dir:
        write_folder(model, work_dir, format, repo_id=repo_id)
        return api.upload_folder(
            repo_id=repo_id, folder_path=work_dir, revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload Matryoshka model ({format} export, mrl-text)",
        )


__all__ = [
    "EXPORT_FORMATS",
    "check_exportable",
    "export_model",
    "export_onnx",
    "exported_ranges",
    "push_exported_to_hub",
]
