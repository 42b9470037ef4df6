"""Configuration of a Matryoshka embedding model: a wrapped encoder's config plus the nesting.

This file imports only transformers, the standard library and its torch-free sibling
configuration_matryoshka_adaptor.py, so that ``save_pretrained`` can copy it next to the weights and
``trust_remote_code=True`` loads it on a machine that never installed mrl-text.
"""

import math
import numbers
import os
import re
import warnings

from transformers import AutoConfig, PreTrainedConfig

from .configuration_matryoshka_adaptor import MatryoshkaAdaptorConfig

POOLING_MODES = ("mean", "cls", "max", "last")
# The same modes as sentence-transformers' Pooling names them (the same computations on right-padded batches).
SENTENCE_TRANSFORMERS_POOLING = {"mean": "mean", "cls": "cls", "max": "max", "last": "lasttoken"}
# Where a saved folder keeps the code of its sentence-transformers MatryoshkaTruncation module (the
# mrl_text/models/ file of that name; sentence-transformers reserves class paths that start with
# `sentence_transformers.`).
SENTENCE_TRANSFORMERS_MODULE_FILE = "sentence_transformers_matryoshka.py"


class WrappingConfig(PreTrainedConfig):
    """What every Matryoshka config shares: a nested `encoder` config, saved with a portable name, and a check that
    a saved config describes a Matryoshka model before it loads as something else."""

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # Checked when loading, not when constructing: `MatryoshkaConfig()` with defaults starts a new model.
        if "encoder" not in config_dict:
            raise ValueError(
                f"This {cls.__name__} has no `encoder` entry (keys: {sorted(config_dict)}), so it cannot tell which "
                "model it wraps. Add the wrapped model's config as `encoder` (with its `model_type`)."
            )
        if config_dict.get("is_matryoshka", True) and "matryoshka_dimensions" not in config_dict:
            raise ValueError(
                f"This {cls.__name__} sets `is_matryoshka` but has no `matryoshka_dimensions`; add the trained "
                'sizes, e.g. "matryoshka_dimensions": [768, 256, 64] (largest first).'
            )
        return super().from_dict(config_dict, **kwargs)

    def get_text_config(self, decoder=None, encoder=None):
        """The wrapped model's text config: what transformers reads for the vocabulary and the special tokens (so
        the Trainer finds the tokenizer's pad token already there instead of "aligning" it with a warning)."""
        return self.encoder.get_text_config(decoder=decoder, encoder=encoder)

    def to_dict(self):
        output = super().to_dict()
        output["encoder"] = self.encoder.to_dict()
        # config.json is shared (Hub, colleagues): name the wrapped model, and the towers nested in it (a dual
        # encoder's text_config / vision_config), never by a path of this machine.
        pending = [output["encoder"]]
        while pending:
            nested = pending.pop()
            if nested.get("_name_or_path"):
                nested["_name_or_path"] = portable_name(nested["_name_or_path"])
            pending += [value for value in nested.values() if isinstance(value, dict)]
        return output


class MatryoshkaConfig(WrappingConfig):
    r"""
    Configuration of a [`MatryoshkaModel`]: any encoder that `AutoModel.from_config` can build (BERT, RoBERTa,
    MPNet, DistilBERT, XLM-R, ModernBERT, ...) whose pooled embedding is trained so that its first `d`
    coordinates are a good embedding for every `d` in `matryoshka_dimensions` (Kusupati et al., 2022).

    Args:
        encoder (`dict` or `PreTrainedConfig`, *optional*):
            Config of the wrapped encoder (a dict needs its `model_type`). Defaults to a BERT-base config.
        matryoshka_dimensions (`list[int]`, *optional*):
            The nested sizes, e.g. `[768, 512, 256, 128, 64, 32, 16]`. Stored largest first. The full embedding
            size is always included (added with a warning when missing). Defaults to [`default_dimensions`]: the
            full size and every power of two below it down to 16 (384 -> `[384, 256, 128, 64, 32, 16]`).
        matryoshka_weights (`list[float]`, *optional*):
            Loss weight of each size, in the order of `matryoshka_dimensions`. Defaults to 1.0 for every size.
        truncate_dim (`int`, *optional*):
            The size `forward` and `encode` return by default; one of `matryoshka_dimensions`. `None` means full
            size. Editing it in `config.json` changes what a loaded model returns, with no code change.
        pooling (`str`, *optional*, defaults to `"mean"`):
            How token states become one vector: `"mean"` (masked mean), `"cls"` (first token), `"max"` (masked
            max) or `"last"` (last non-padding token).
        normalize (`bool`, *optional*, defaults to `True`):
            Whether embeddings are unit length. Truncated embeddings are re-normalized after truncation.
        projection_dim (`int`, *optional*):
            When set, a linear layer maps the pooled vector (encoder hidden size) to this size.
        efficient_heads (`bool`, *optional*, defaults to `False`):
            For task models: one weight-tied head whose prefixes serve every size (MRL-E) instead of one head per
            size (MRL).
        scale_head_inputs (`bool`, *optional*, defaults to `False`):
            For task models: the head of size `d` reads its prefix times `sqrt(full / d)`, so every prefix is about as
            long as the full vector. Useful with `efficient_heads` (one tied weight cannot learn at a rate per size,
            and small prefixes would give too-small logits); off by default, the paper's heads.
        max_seq_length (`int`, *optional*):
            Longest input `encode` tokenizes; `None` uses the tokenizer's limit.
        matryoshka_layers (`list[int]`, *optional*):
            The encoder depths (numbers of layers, counted from the input) the embedding is trained to be used at
            (2D Matryoshka, `encode(texts, layers=3)`), e.g. `[6, 4, 2]`; stored deepest first, the full depth always
            included. `None`: the model is trained and used at full depth only.
        is_matryoshka (`bool`, defaults to `True`):
            Tells serving engines (vLLM) that `matryoshka_dimensions` may be requested as `dimensions=`.
        adaptor (`dict`, *optional*):
            The config of a `MatryoshkaAdaptor` (its `to_dict()`) applied after pooling and projection, before
            truncation; its weights are saved with the model's. `None` (default): no adaptor. Attach one with
            `mrl_text.add_adaptor(model, ...)`.
        quantization_ranges (`dict[str, list[list[float]]]`, *optional*):
            Per size (`"64"`), the per-coordinate `[minima, maxima]` of the truncated, normalized embeddings that
            `encode(..., precision="int8" | "uint8")` quantizes with; written by `model.calibrate_quantization(texts)`.
            The layout of sentence-transformers' `quantize_embeddings(ranges=...)`. Keys `"64/layers=3"` hold the
            ranges of size 64 after the first 3 layers (`encode(..., layers=3)`), one per calibrated depth.

    Example:

    ```python
    >>> from transformers import BertConfig
    >>> from mrl_text import MatryoshkaConfig
    >>> config = MatryoshkaConfig(encoder=BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
    ...                           intermediate_size=128), matryoshka_dimensions=[64, 32, 16, 8], truncate_dim=32)
    >>> config.matryoshka_dimensions
    [64, 32, 16, 8]
    ```
    """

    model_type = "matryoshka"
    sub_configs = {"encoder": AutoConfig}

    def __init__(
        self,
        encoder=None,
        matryoshka_dimensions=None,
        matryoshka_weights=None,
        truncate_dim=None,
        pooling="mean",
        normalize=True,
        projection_dim=None,
        efficient_heads=False,
        max_seq_length=None,
        is_matryoshka=True,
        adaptor=None,
        quantization_ranges=None,
        matryoshka_layers=None,
        scale_head_inputs=False,
        **kwargs,
    ):
        encoder = encoder_config_from(encoder, default_model_type="bert")
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.projection_dim = projection_dim
        self.efficient_heads = bool(efficient_heads)
        self.scale_head_inputs = bool(scale_head_inputs)
        self.max_seq_length = max_seq_length
        self.is_matryoshka = True if is_matryoshka is None else bool(is_matryoshka)
        self.matryoshka_dimensions = matryoshka_dimensions
        self.matryoshka_weights = matryoshka_weights
        self.truncate_dim = truncate_dim
        self.quantization_ranges = quantization_ranges
        self._validate_nesting()
        self.adaptor = self.check_adaptor(adaptor)
        self.matryoshka_layers = validate_layers(matryoshka_layers, getattr(encoder, "num_hidden_layers", None))
        super().__init__(**kwargs)

    @property
    def embedding_size(self):
        """Size of the full embedding: `projection_dim` when set, else the encoder's hidden size."""
        if self.projection_dim is not None:
            return self.projection_dim
        hidden = getattr(self.encoder, "hidden_size", None)
        if hidden is None:
            raise ValueError(
                f"Cannot tell the embedding size of encoder type '{self.encoder.model_type}' (no `hidden_size`); "
                "set `projection_dim`."
            )
        return hidden

    def _validate_nesting(self):
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"Unknown pooling {self.pooling!r}; choose one of {', '.join(POOLING_MODES)}.")
        if self.projection_dim is not None and (
            isinstance(self.projection_dim, bool)
            or not isinstance(self.projection_dim, int)
            or self.projection_dim <= 0
        ):
            raise ValueError(f"`projection_dim` must be a positive integer or None, got {self.projection_dim!r}.")
        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int) or self.max_seq_length <= 0):
            raise ValueError(f"`max_seq_length` must be a positive integer or None, got {self.max_seq_length!r}.")

        self.matryoshka_dimensions, self.matryoshka_weights = validate_nesting(
            self.matryoshka_dimensions, self.matryoshka_weights, self.truncate_dim, self.embedding_size
        )
        self.quantization_ranges = check_quantization_ranges(
            self.quantization_ranges, self.embedding_size, getattr(self.encoder, "num_hidden_layers", None))

    def check_adaptor(self, adaptor, matryoshka_dimensions=None):
        """`adaptor` as a complete adaptor config dict fitting this model's embedding and sizes (default its
        `matryoshka_dimensions`), or None; a clear error otherwise. (Not `validate_*`: transformers' strict configs
        run methods of that name as argument-free validators.)"""
        if adaptor is None:
            return None
        if not isinstance(adaptor, dict):
            raise ValueError(f"`adaptor` must be an adaptor config dict (MatryoshkaAdaptorConfig.to_dict()) or None, "
                             f"got {type(adaptor).__name__}.")
        try:
            adaptor = MatryoshkaAdaptorConfig.from_dict(adaptor)
        except TypeError as error:  # a missing required field
            raise ValueError(
                f"`adaptor` config is incomplete ({error}); save it from MatryoshkaAdaptorConfig.to_dict()."
            ) from None
        if adaptor.embedding_size != self.embedding_size:
            raise ValueError(
                f"The adaptor maps embeddings of size {adaptor.embedding_size}, but this model's embedding "
                f"size is {self.embedding_size}; fit the adaptor on this model's embeddings."
            )
        sizes = self.matryoshka_dimensions if matryoshka_dimensions is None else matryoshka_dimensions
        extra = [d for d in adaptor.matryoshka_dimensions if d not in sizes]
        if extra:
            raise ValueError(f"The adaptor was fit for sizes {extra} that are not among this model's "
                             f"matryoshka_dimensions {sizes}; add them to matryoshka_dimensions.")
        return adaptor.to_dict()



def check_dim(dim, full, trained=None, owner="dim"):
    """The one check of a requested embedding size: `dim` must be a positive integer no larger than `full`.

    Returns `dim` as an `int` (numpy integers accepted), or None for None (full size). `trained` (the trained sizes)
    and `owner` (what the value is called, e.g. "truncate_dim") only make the error message more helpful.
    """
    if dim is None:
        return None
    fix = f"use an integer in 1..{full}" + (f", ideally one of the trained sizes {list(trained)}" if trained else "")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim <= 0:
        raise ValueError(f"{owner}={dim!r} is not a positive integer; {fix} (or None for full size).")
    if dim > full:
        raise ValueError(f"{owner}={dim} is larger than the embedding size {full}; {fix}.")
    return int(dim)


# Keys of `config.quantization_ranges`: "64" (size 64, full depth) or "64/layers=3" (size 64 after the first 3 layers).
RANGES_KEY = re.compile(r"^([1-9][0-9]*)(?:/layers=([1-9][0-9]*))?$")


def ranges_key(dim, layers=None):
    """The `quantization_ranges` key of size `dim` at depth `layers` (None: full depth)."""
    return str(int(dim)) if layers is None else f"{int(dim)}/layers={int(layers)}"


def check_quantization_ranges(value, full, num_layers=None):
    """Validate `config.quantization_ranges` (None, or `{"dim": [[minima], [maxima]]}`, plus `"dim/layers=k"` keys
    for depth `k` < `num_layers`) for a model of size `full`; returns it with string keys (JSON keeps only those)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("`quantization_ranges` must be a dict {size: [[minima], [maxima]]} or None; got "
                         f"{type(value).__name__}.")
    checked = {}
    for key, ranges in value.items():
        match = RANGES_KEY.match(str(key).strip())
        dim = int(match.group(1)) if match else 0
        layers = int(match.group(2)) if match and match.group(2) else None
        if not 0 < dim <= full or (layers is not None and num_layers is not None and layers >= num_layers):
            raise ValueError(f"`quantization_ranges` has key {key!r}, not a size in 1..{full} (with '/layers=k' for "
                             "a depth k below the encoder's full depth); recalibrate.")
        key = ranges_key(dim, layers)
        rows = [list(map(float, row)) for row in ranges] if isinstance(ranges, (list, tuple)) else None
        if rows is None or len(rows) != 2 or any(len(row) != dim for row in rows) or not all(
            math.isfinite(v) for row in rows for v in row
        ) or any(low > high for low, high in zip(*rows)):
            raise ValueError(
                f"`quantization_ranges[{key!r}]` must be two lists (minima, maxima) of {dim} finite numbers with "
                "minima <= maxima; recalibrate with `model.calibrate_quantization(texts)`."
            )
        checked[key] = rows
    return checked


def portable_name(name_or_path):
    """A model's name fit for a shared config.json: never an absolute path of this machine.

    Hub ids stay as they are. A local folder is named by the Hub id it came from when that is known (a Hub cache
    snapshot `models--org--name/snapshots/...`, or the repository its model card loads in its usage snippets, as
    cards copied from the Hub do), else by the folder's own name. A snippet that loads a local folder (this one by a
    relative path such as `outputs/my-model`, or any folder that exists here) names no Hub repository.
    """
    name_or_path = str(name_or_path or "")
    if not os.path.isdir(name_or_path):  # a Hub id (or a folder gone since: keep its name, not its path)
        return os.path.basename(name_or_path.rstrip("/\\")) if os.path.isabs(name_or_path) else name_or_path
    path = os.path.abspath(name_or_path)
    cached = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]", path)
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    card = os.path.join(path, "README.md")
    if os.path.isfile(card):
        with open(card, encoding="utf-8", errors="replace") as f:
            text = f.read()
        snippet = re.search(r"(?:from_pretrained|SentenceTransformer)\(\s*['\"]([\w.-]+/[\w.-]+)['\"]", text)
        if snippet and not _is_local_path_of(snippet.group(1), path):
            return snippet.group(1)
    return os.path.basename(path.rstrip("/\\"))


def _is_local_path_of(name, path):
    """Whether `name` (as a card's snippet loads it) is a local folder rather than a Hub id: `path`'s own ending (the
    folder by the relative path it was saved under) or a folder that exists here (which transformers would load
    instead of the Hub repository)."""
    parts = [part for part in re.split(r"[/\\]", name) if part]
    return os.path.normpath(path).split(os.sep)[-len(parts):] == parts or os.path.isdir(name)


# The smallest default size: below 16 coordinates a text embedding keeps little of its meaning.
SMALLEST_DEFAULT_DIM = 16


def default_dimensions(full):
    """The nested sizes of a new model when none are given: the full size, then every power of two below it down to
    16 (384 -> [384, 256, 128, 64, 32, 16]; 768 -> [768, 512, ..., 16]). Halving keeps the sizes evenly spread on
    the log scale that cost and quality follow; a config, `from_encoder`, the recipes and the adaptor all use it."""
    dims, size = [int(full)], SMALLEST_DEFAULT_DIM
    while size < full:
        dims.insert(1, size)
        size *= 2
    return dims


def validate_nesting(matryoshka_dimensions, matryoshka_weights, truncate_dim, full):
    """Check the nesting fields of a Matryoshka config against its full embedding size `full`.

    Shared by every Matryoshka config (text models, dual encoders) so that they accept and refuse the same values
    with the same messages. Returns `(dimensions, weights)`, largest size first, the full size always included;
    `matryoshka_dimensions=None` (a new model) gives [`default_dimensions`] (saved configs always list their sizes).
    """
    dims = default_dimensions(full) if matryoshka_dimensions is None else list(matryoshka_dimensions)
    if not dims:
        raise ValueError("`matryoshka_dimensions` is empty; give at least one size, e.g. [768, 256, 64].")
    dims = [check_dim(d, full, owner="`matryoshka_dimensions` size") for d in dims]
    if len(set(dims)) != len(dims):
        repeated = sorted({d for d in dims if dims.count(d) > 1})
        raise ValueError(f"`matryoshka_dimensions` repeats {repeated}; each size must appear once.")

    weights = matryoshka_weights
    if weights is None:
        weights = [1.0] * len(dims)
    else:
        weights = [float(w) for w in weights]
        if len(weights) != len(dims):
            raise ValueError(
                f"`matryoshka_weights` has {len(weights)} values ({weights}) but `matryoshka_dimensions` has "
                f"{len(dims)} sizes ({dims}); give one weight per size."
            )
        for w in weights:
            if not (w >= 0 and math.isfinite(w)):  # also refuses NaN
                raise ValueError(f"Matryoshka weight {w!r} is negative, infinite or NaN; use finite weights >= 0.")
        if not any(weights):
            raise ValueError(
                f"`matryoshka_weights` {weights} are all zero: no size would be trained; give at least one size a "
                "positive weight (e.g. 1.0 for every size)."
            )

    if full not in dims:
        warnings.warn(
            f"`matryoshka_dimensions` {dims} lacks the full embedding size {full}; adding it with weight 1.0.",
            stacklevel=4,
        )
        dims.append(full)
        weights.append(1.0)

    # Largest first: the order users write (768 > 512 > ... > 16) and that serving engines list.
    order = sorted(range(len(dims)), key=lambda i: -dims[i])
    dims, weights = [dims[i] for i in order], [weights[i] for i in order]
    if check_dim(truncate_dim, full, owner="truncate_dim") not in dims + [None]:
        raise ValueError(
            f"`truncate_dim` {truncate_dim!r} is not one of the trained sizes {dims}; "
            "pick one of them or None for full size."
        )
    return dims, weights


def validate_layers(matryoshka_layers, num_layers):
    """Check `matryoshka_layers` (encoder depths) against the encoder's `num_layers`; deepest first, full depth
    included (added with a warning when missing). None stays None: full depth only."""
    if matryoshka_layers is None:
        return None
    if num_layers is None:
        raise ValueError(
            "`matryoshka_layers` is set but the encoder config has no `num_hidden_layers`; depth truncation needs a "
            "stack of layers (BERT, RoBERTa, MPNet, DistilBERT, ...). Set matryoshka_layers=None."
        )
    layers = list(matryoshka_layers)
    if not layers:
        raise ValueError(f"`matryoshka_layers` is empty; give depths in 1..{num_layers}, e.g. [{num_layers}, 3].")
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= num_layers:
            raise ValueError(
                f"`matryoshka_layers` holds {k!r}; every depth must be an integer in 1..{num_layers} (the encoder's "
                "number of layers)."
            )
    layers = [int(k) for k in layers]
    if len(set(layers)) != len(layers):
        raise ValueError(f"`matryoshka_layers` {layers} repeats a depth; each must appear once.")
    if num_layers not in layers:
        warnings.warn(
            f"`matryoshka_layers` {layers} lacks the full depth {num_layers}; adding it.", stacklevel=4
        )
        layers.append(num_layers)
    return sorted(layers, reverse=True)


def encoder_config_from(encoder, default_model_type):
    """The wrapped model's config from a config object, a dict with `model_type`, or None (the default type)."""
    if encoder is None:
        encoder = AutoConfig.for_model(default_model_type)
    elif isinstance(encoder, dict):
        encoder = dict(encoder)
        if "model_type" not in encoder:
            raise ValueError(
                f"`encoder` config dict has no 'model_type' (keys: {sorted(encoder)}); pass a config object "
                "such as BertConfig(...) or add 'model_type' to the dict."
            )
        encoder = AutoConfig.for_model(**encoder)
    elif not isinstance(encoder, PreTrainedConfig):
        raise ValueError(
            f"`encoder` must be a transformers config or a dict, got {type(encoder).__name__}; use "
            "AutoConfig.from_pretrained(name) to get one."
        )
    return encoder


__all__ = [
    "MatryoshkaConfig",
    "POOLING_MODES",
    "SENTENCE_TRANSFORMERS_MODULE_FILE",
    "SENTENCE_TRANSFORMERS_POOLING",
    "check_dim",
    "check_quantization_ranges",
    "default_dimensions",
    "encoder_config_from",
    "portable_name",
    "ranges_key",
    "validate_layers",
    "validate_nesting",
    "WrappingConfig",
]
