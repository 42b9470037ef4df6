"""Building blocks of the Matryoshka models: the one truncation rule, pooling, and building or loading the encoder.

Like modeling_matryoshka.py, this file travels next to saved weights: it imports only torch, transformers and its
sibling configuration file (relative import), so `trust_remote_code=True` loads a model without mrl-text.
"""

import inspect
import json
import os
import warnings

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .configuration_matryoshka import WrappingConfig, check_dim, portable_name


def truncate_embeddings(embeddings, dim=None, normalize=True):
    """Keep the first `dim` coordinates of each embedding and, when `normalize`, rescale them to unit length.

    The one truncation rule of the project: the model, the sentence-transformers module, the evaluators and
    retrieval all call it. Normalizing must come *after* slicing: a prefix of a unit vector is not unit length.

    Args:
        embeddings (`torch.Tensor` or `numpy.ndarray` of shape `(..., full_dim)`): full-size embeddings.
        dim (`int`, *optional*): size to keep; `None` keeps every coordinate.
        normalize (`bool`): re-normalize each truncated vector to unit L2 norm.

    Returns:
        Same type as the input, shape `(..., dim)`.
    """
    full = embeddings.shape[-1]
    dim = check_dim(dim, full)
    if not isinstance(embeddings, torch.Tensor):  # numpy (or anything torch can view without a copy)
        if not normalize and hasattr(embeddings, "shape"):  # a view, read-only where the input is (a memory map)
            return embeddings if dim is None else embeddings[..., :dim]
        with warnings.catch_warnings():
            # A read-only array is only read here: the normalized result is a new array.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.as_tensor(embeddings)
        return truncate_embeddings(tensor, dim, normalize).numpy()
    if dim is not None and dim < full:
        embeddings = embeddings[..., :dim]
    if normalize:
        embeddings = F.normalize(embeddings, p=2, dim=-1)
    return embeddings


def pool(last_hidden_state, attention_mask, mode):
    """Pool token states `(batch, seq, hidden)` into one vector per sequence `(batch, hidden)`."""
    if mode == "cls":
        return last_hidden_state[:, 0]
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    if mode == "mean":
        return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "max":
        masked = last_hidden_state.masked_fill(mask == 0, torch.finfo(last_hidden_state.dtype).min)
        return masked.max(1).values
    if mode == "last":
        # Works for right padding (last 1 in the mask) and left padding (the final position).
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * positions).argmax(1)
        return last_hidden_state[torch.arange(last_hidden_state.shape[0], device=last.device), last]
    raise ValueError(f"Unknown pooling {mode!r}; choose one of mean, cls, max, last.")


def build_encoder(encoder_config, pretrained_name_or_path=None, **from_pretrained_kwargs):
    """Build (or load) the wrapped encoder without its pooler.

    The embedding pools token states itself: an unused pooler costs time and makes DDP fail ("parameters that were
    not used in producing loss"). The encoder is built whole and the pooler dropped where its class is designed to
    run without one (`add_pooling_layer`), so that loading a checkpoint that has pooler weights reports nothing.
    """
    if pretrained_name_or_path is None:
        encoder = AutoModel.from_config(encoder_config)
    else:
        encoder = AutoModel.from_pretrained(pretrained_name_or_path, config=encoder_config, **from_pretrained_kwargs)
        # config.json names the encoder (the model card's base model) by its Hub id, never a path of this machine.
        encoder.config._name_or_path = portable_name(pretrained_name_or_path)
    if "add_pooling_layer" in inspect.signature(type(encoder).__init__).parameters:
        encoder.pooler = None
    return encoder


def hub_kwargs(from_pretrained_kwargs):
    """The `from_pretrained` options that also apply to configs and tokenizers (revision, cache, token, ...)."""
    keys = ("revision", "cache_dir", "trust_remote_code", "token", "local_files_only")
    return {k: from_pretrained_kwargs[k] for k in keys if k in from_pretrained_kwargs}


def config_to_wrap(name_or_path, config_kwargs):
    """The config of the pretrained model a new Matryoshka model wraps; a saved Matryoshka model is refused."""
    config = AutoConfig.from_pretrained(name_or_path, **config_kwargs)
    if isinstance(config, WrappingConfig):
        raise ValueError(
            f"{name_or_path!r} is already a Matryoshka model; load it with from_pretrained (e.g. "
            "AutoModel.from_pretrained) instead of wrapping it again."
        )
    return config


# Files holding a saved model's weights, one of which a loadable folder has.
WEIGHTS_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)


def check_model_folder(name_or_path, model_type, check_type=True):
    """Before `from_pretrained` loads anything: a missing folder, a config.json that is not JSON, a folder of another
    kind of model (`check_type`) and missing weights each raise an error naming the path and the fix (transformers'
    own say "Repo id must use alphanumeric chars", or print a traceback). A Hub id passes unchecked."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name_or_path is None:
        return
    path = os.fspath(name_or_path)
    if not os.path.isdir(path):
        try:
            local = isinstance(name_or_path, os.PathLike) or os.path.exists(path) or path.startswith(("~", "."))
            validate_repo_id(path)
        except HFValidationError:
            local = True
        if local:
            what = "a file, not a folder" if os.path.exists(path) else "no such folder"
            raise FileNotFoundError(f"{path}: {what}; pass the folder save_pretrained wrote (or a Hub repository id "
                                    "such as 'org/name').")
        return
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{path}: no config.json, so not a saved model folder; pass the folder "
                                "save_pretrained wrote.")
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{config_file}: not valid JSON ({error}); the file is damaged: copy it again from where the "
                         "model came from, or save the model again.") from None
    found = config.get("model_type") if isinstance(config, dict) else None
    if check_type and found != model_type:
        if os.path.isfile(os.path.join(path, "modules.json")):
            raise ValueError(
                f"{path} is a sentence-transformers folder of a {found!r} model (an export), not a Matryoshka model "
                f"folder: load it with SentenceTransformer({path!r}), or get a MatryoshkaModel back with "
                f"mrl_text.from_sentence_transformer({path!r})."
            )
        raise ValueError(f"{path} holds a {found!r} model, not a Matryoshka model (model_type {model_type!r}): wrap a "
                         f"pretrained encoder in a new one with MatryoshkaModel.from_encoder({path!r}).")
    if not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHTS_FILES):
        raise FileNotFoundError(f"{path}: no model weights (model.safetensors); the save did not finish or the file "
                                f"was not copied: save the model again, or copy model.safetensors into {path}.")


def resolve_tokenizer(tokenizer, name_or_path, config_kwargs):
    """`tokenizer=True`: load the model's own; a string: load that one; an object: use it; falsy: None."""
    if tokenizer is True:
        return AutoTokenizer.from_pretrained(name_or_path, **config_kwargs)
    if isinstance(tokenizer, str):
        return AutoTokenizer.from_pretrained(tokenizer, **config_kwargs)
    return tokenizer or None


def warn_once(model, kind, value, message, stacklevel):
    """Warn with `message` the first time `model` is asked for this `kind` of untrained `value` (a size, a depth):
    a loop over texts must not repeat it."""
    warned = model.__dict__.setdefault(f"_untrained_{kind}_warned", set())
    if value not in warned:
        warned.add(value)
        warnings.warn(message, stacklevel=stacklevel + 1)


def weighted_size_sum(loss_at, weights, smaller_sizes_scale=1.0, sizes=None):
    """The Matryoshka loss, `sum_i w_i * loss_at(i)` over the nested sizes: one rule for the embedding losses, the
    classification heads and the MLM heads.

    Args:
        loss_at (`Callable[[int], torch.Tensor]`): the scalar loss of the size at an index (into `weights`).
        weights (`list[float]`): one weight per size, the full size first (index 0), smaller sizes after it.
        smaller_sizes_scale (`float`): multiplies the weight of every size below the full one: the knob the size
            schedule turns per step (0 trains the full size alone, 1 every size at its weight).
        sizes (`list[int]`, *optional*): the indices to sum over (a per-step sample); default every size.

    A size whose weight is 0 is skipped: `loss_at` is not called, so it costs no computation and adds nothing to the
    graph. Returns a scalar tensor (the float 0.0 when every weight is 0).
    """
    total = 0.0
    for index in range(len(weights)) if sizes is None else sizes:
        weight = float(weights[index]) * (1.0 if index == 0 else smaller_sizes_scale)
        if weight:
            total = total + weight * loss_at(index)
    return total


def head_index(config, dim, head="head"):
    """Which per-size head answers at `dim` (default the config's `truncate_dim`; None: the full size's, index 0), as
    an index into `config.matryoshka_dimensions`. A size without a head is refused by name (task models predict only at
    the sizes they have heads for, unlike embeddings, whose every prefix is usable)."""
    dims = config.matryoshka_dimensions
    dim = check_dim(config.truncate_dim if dim is None else dim, config.embedding_size, dims)
    if dim is not None and dim not in dims:
        raise ValueError(f"dim={dim} has no {head}; this model has heads at the sizes {dims}.")
    return dims.index(dim) if dim is not None else 0
