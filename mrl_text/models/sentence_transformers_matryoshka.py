"""sentence-transformers integration: `encode(texts, dim=64)`, one saved folder for both libraries, and import of
existing sentence-transformers models.

A folder written by `MatryoshkaModel.save_pretrained` loads as

    SentenceTransformer(folder, trust_remote_code=True)
      Transformer (the MatryoshkaModel itself) -> Pooling -> MatryoshkaTruncation -> Normalize

`MatryoshkaTruncation` (below) declares `dim` in `forward_kwargs`, so sentence-transformers 6 routes
`encode(..., dim=64)` to it. It slices *before* `Normalize`, so every size comes out unit length and equals
`MatryoshkaModel.encode(..., dim=64)`.

This file is copied into every saved folder as `sentence_transformers_matryoshka.py` (sentence-transformers
reserves class paths that start with `sentence_transformers.` for its own classes), and sentence-transformers
imports it from there; that import is why it needs `trust_remote_code=True`. So it imports only torch,
transformers, sentence-transformers and its siblings (relative imports), like the modeling files: the folder
works on machines that never installed mrl-text.
"""

import copy
import os
import shutil
import weakref

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Module, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

from .configuration_matryoshka import (
    SENTENCE_TRANSFORMERS_MODULE_FILE,
    SENTENCE_TRANSFORMERS_POOLING,
    MatryoshkaConfig,
    check_dim,
    portable_name,
)
from .modeling_matryoshka import MatryoshkaModel, build_encoder, truncate_embeddings
from .modeling_matryoshka_depth import check_layers
from .quantization import model_ranges, quantize

POOLING_FROM_SENTENCE_TRANSFORMERS = {theirs: ours for ours, theirs in SENTENCE_TRANSFORMERS_POOLING.items()}


def _matryoshka_config_of(model):
    """The MatryoshkaConfig of the transformers model a SentenceTransformer wraps, else None.

    Checked by its fields, not its class: under `trust_remote_code` the config class comes from the folder's copy
    of configuration_matryoshka.py, a different class object than mrl_text's.
    """
    first = model[0] if len(model) else None
    config = getattr(getattr(first, "model", None), "config", None)
    if getattr(config, "is_matryoshka", False) and getattr(config, "matryoshka_dimensions", None):
        return config if getattr(config, "model_type", None) == "matryoshka" else None  # else an exported encoder
    return None


class MatryoshkaTruncation(Module):
    """Truncate `sentence_embedding` to a Matryoshka size: `encode(texts, dim=64)`.

    Place it after pooling and *before* `Normalize`: it applies the MatryoshkaModel's adaptor when it has one (the
    adaptor's map depends on the size, so it runs here, where the size is known), keeps the first `dim` coordinates
    (with `truncate_embeddings`, the project's one truncation rule) and `Normalize` then makes the prefix unit length.

    Which size:
      * `dim` passed to `encode` / `encode_query` / `encode_document` (checked: a positive integer no larger than
        the embedding size);
      * else the model config's `truncate_dim` (`config.json` of the folder, the same field `MatryoshkaModel`
        reads; the values saved with this module are used only when it does not sit on a MatryoshkaModel);
      * and when the SentenceTransformer has its own `truncate_dim`, the smaller of the two wins, so the vector is
        truncated *and re-normalized* here rather than only sliced after normalization.
    In training mode no default applies (only an explicit `dim`): losses such as sentence-transformers'
    `MatryoshkaLoss` need the full embedding and slice and re-normalize every size themselves.

    Args:
        embedding_dimension (`int`): the full embedding size.
        matryoshka_dimensions (`list[int]`, *optional*): the trained sizes (shown in errors and model cards).
        truncate_dim (`int`, *optional*): default size; `None` keeps the full embedding.
    """

    config_keys = ["embedding_dimension", "matryoshka_dimensions", "truncate_dim"]
    forward_kwargs = {"dim"}

    def __init__(self, embedding_dimension, matryoshka_dimensions=None, truncate_dim=None):
        super().__init__()
        self.embedding_dimension = embedding_dimension
        self.matryoshka_dimensions = list(matryoshka_dimensions or [embedding_dimension])
        self.truncate_dim = truncate_dim
        self._sentence_transformer = None  # weak reference: the model owns this module, not the other way round
        self._matryoshka_config = None
        # The MatryoshkaModel, for its adaptor: in a tuple (not registered as a submodule, so not saved twice), and a
        # strong reference, so it survives the pickling of multi-process encoding.
        self._wrapped = (None,)

    def on_model_ready(self, model):
        self._sentence_transformer = weakref.ref(model)
        self._matryoshka_config = _matryoshka_config_of(model)
        wrapped = model[0].model if self._matryoshka_config is not None else None
        self._wrapped = (wrapped,)
        if wrapped is not None and getattr(wrapped, "_tokenizer", False) is None:
            # Hand the MatryoshkaModel its tokenizer: its own lazy lookup would reload it from the folder (and ask
            # about remote code again), and `model[0].model.encode(...)` works too.
            wrapped.tokenizer = model.tokenizer

    def __getstate__(self):  # multi-process encoding pickles the model; a weak reference does not pickle
        state = dict(super().__getstate__())  # a copy: object.__getstate__ hands out the live __dict__
        state["_sentence_transformer"] = None
        return state

    def _sizes(self):
        """(full size, trained sizes, default size): from the live MatryoshkaConfig when there is one."""
        config = self._matryoshka_config
        if config is not None:
            return config.embedding_size, list(config.matryoshka_dimensions), config.truncate_dim
        return self.embedding_dimension, self.matryoshka_dimensions, self.truncate_dim

    def resolve_dim(self, dim=None, training=None):
        """The size `forward` truncates to (`None`: full size); raises ValueError for an impossible `dim`.

        `training` defaults to the module's mode; `False` gives what `encode` returns.
        """
        full, trained, default = self._sizes()
        dim = check_dim(dim, full, trained)
        if self.training if training is None else training:
            return dim
        if dim is None:
            dim = default
        owner = self._sentence_transformer() if self._sentence_transformer is not None else None
        outer = getattr(owner, "truncate_dim", None)
        if outer is not None and (dim is None or outer < dim):
            dim = outer
        return dim if dim is None or dim < full else None

    def forward(self, features, dim=None, **kwargs):
        dim = self.resolve_dim(dim)
        adaptor = getattr(self._wrapped[0], "adaptor", None)
        if adaptor is not None:
            features["sentence_embedding"] = adaptor.at_size(
                features["sentence_embedding"], dim, normalize_input=self._matryoshka_config.normalize
            )
        if dim is not None:
            features["sentence_embedding"] = truncate_embeddings(features["sentence_embedding"], dim, normalize=False)
        return features

    def get_embedding_dimension(self):
        """The size `encode` returns by default (a new SentenceTransformer is in training mode until encode)."""
        dim = self.resolve_dim(training=False)
        return dim if dim is not None else self._sizes()[0]

    def quantization_ranges(self, dim, layers=None):
        """The model's calibrated int8/uint8 ranges at size `dim` (after the first `layers` layers; None: full depth)
        as a `(2, dim)` numpy array: pass them to sentence-transformers' `quantize_embeddings(embeddings, "int8",
        ranges=...)`. (`encode(precision="int8")` measures ranges on the batch it encodes instead, so its codes
        differ from the model's.)"""
        return model_ranges(self._matryoshka_config, int(dim), "int8", self._depth(layers)).numpy()

    def quantize(self, embeddings, precision, layers=None):
        """Codes of `encode(texts, dim=d[, layers=k])` output with the model's calibrated ranges (numpy): the codes
        `MatryoshkaModel.encode(texts, dim=d, precision=...[, layers=k])` gives. Uncalibrated int8 raises, saying to
        calibrate."""
        embeddings = torch.as_tensor(embeddings)
        ranges = model_ranges(self._matryoshka_config, embeddings.shape[-1], precision, self._depth(layers))
        return quantize(embeddings, precision, ranges).numpy()

    def _depth(self, layers):
        """`layers` checked as `encode(layers=)` checks it (None for the full depth)."""
        if layers is None:
            return None
        if self._wrapped[0] is None:
            raise ValueError(f"layers={layers!r} needs the MatryoshkaModel this module sits on; it stands alone.")
        return check_layers(self._wrapped[0], layers)

    def get_config_dict(self):
        full, trained, default = self._sizes()
        return {"embedding_dimension": full, "matryoshka_dimensions": trained, "truncate_dim": default}

    def save(self, output_path, *args, safe_serialization=True, **kwargs):
        self.save_config(output_path)
        # modules.json names this class `sentence_transformers_matryoshka.MatryoshkaTruncation`, loaded from the
        # model's root folder (one above this module's): put this file there, from wherever it was imported (mrl_text,
        # or a folder loaded with trust_remote_code), so a re-saved model loads where mrl-text is not installed.
        root = os.path.dirname(os.path.abspath(output_path))
        target = os.path.join(root, SENTENCE_TRANSFORMERS_MODULE_FILE)
        if os.path.abspath(__file__) != target:
            shutil.copyfile(__file__, target)


def _exported_fields(st_model):
    """What `mrl_text.deploy.export.export_model` adds to a plain pipeline: the sizes (and calibrated int8 ranges) in
    the transformer's config.json, `truncate_dim`, and one linear Dense module right after Pooling (it stands for
    `projection_dim`)."""
    encoder_config = copy.deepcopy(st_model[0].model.config)
    dims = (
        getattr(encoder_config, "matryoshka_dimensions", None)
        if getattr(encoder_config, "is_matryoshka", False)
        else None
    )
    ranges = getattr(encoder_config, "quantization_ranges", None) if dims is not None else None
    for field in ("is_matryoshka", "matryoshka_dimensions", "quantization_ranges"):
        if hasattr(encoder_config, field):
            delattr(encoder_config, field)
    names = [type(m).__name__ for m in st_model]
    linear = None
    if names.count("Dense") == 1 and "Pooling" in names and names.index("Dense") == names.index("Pooling") + 1:
        dense = st_model[names.index("Dense")]
        if isinstance(dense.activation_function, torch.nn.Identity) and not dense.use_residual:
            linear = dense.linear
    return {"encoder_config": encoder_config, "matryoshka_dimensions": dims, "projection": linear,
            "truncate_dim": st_model.truncate_dim if dims is not None else None, "quantization_ranges": ranges}


def from_sentence_transformer(
    model_name_or_path_or_model,
    matryoshka_dimensions=None,
    matryoshka_weights=None,
    truncate_dim=None,
    model_class=None,
    **sentence_transformer_kwargs,
):
    """Make a Matryoshka model from a sentence-transformers model, ready to fine-tune with MRL.

    Reads the transformer (weights and config, without its unused pooler), the tokenizer, the pooling mode,
    whether it normalizes, `max_seq_length`, its prompts and its similarity function.

    Args:
        model_name_or_path_or_model: a hub id, a local folder, or a loaded `SentenceTransformer`.
        matryoshka_dimensions, matryoshka_weights, truncate_dim: see [`MatryoshkaConfig`].
        model_class: the class to build (default `MatryoshkaModel`).
        **sentence_transformer_kwargs: passed to `SentenceTransformer(...)` when a name or path is given
            (e.g. `revision`, `trust_remote_code`, `cache_folder`); the model is loaded on CPU unless `device`
            says otherwise.

    Raises:
        ValueError: for pipelines a MatryoshkaModel cannot reproduce (modules other than Transformer, Pooling and
            Normalize, pooling modes other than mean/cls/max/lasttoken, `include_prompt=False`), and for models that
            already are Matryoshka models.
    """
    model_class = model_class or MatryoshkaModel
    if isinstance(model_name_or_path_or_model, SentenceTransformer):
        st_model = model_name_or_path_or_model
        source = type(st_model).__name__
    else:
        source = str(model_name_or_path_or_model)
        sentence_transformer_kwargs.setdefault("device", "cpu")
        st_model = SentenceTransformer(source, **sentence_transformer_kwargs)

    modules = list(st_model)
    names = [type(m).__name__ for m in modules]
    if not modules or not isinstance(modules[0], Transformer):
        raise ValueError(
            f"{source!r} does not start with a sentence-transformers Transformer module (modules: {names})."
        )
    encoder = modules[0].model
    if _matryoshka_config_of(st_model) is not None:
        raise ValueError(
            f"{source!r} is already a Matryoshka model; load its folder with MatryoshkaModel.from_pretrained "
            "(save a loaded SentenceTransformer with .save(folder) first)."
        )
    # a folder written by mrl_text.deploy.export: sizes, truncate_dim, Dense projection
    exported = _exported_fields(st_model)
    projection = exported["projection"]
    unsupported = [n for m, n in zip(modules[1:], names[1:])
                   if not isinstance(m, (Pooling, Normalize)) and getattr(m, "linear", None) is not projection]
    poolings = [m for m in modules if isinstance(m, Pooling)]
    if unsupported or len(poolings) != 1:
        raise ValueError(
            f"{source!r} has modules {names}; from_sentence_transformer reads Transformer -> Pooling [-> Normalize] "
            "[-> linear Dense] pipelines (other layers have no MatryoshkaModel counterpart)."
        )
    pooling = poolings[0]
    if pooling.pooling_mode not in POOLING_FROM_SENTENCE_TRANSFORMERS:
        raise ValueError(
            f"Pooling mode {pooling.pooling_mode!r} of {source!r} is not supported; MatryoshkaModel pools with "
            f"{sorted(POOLING_FROM_SENTENCE_TRANSFORMERS)}."
        )
    if not pooling.include_prompt:
        raise ValueError(
            f"{source!r} pools without its prompt tokens (include_prompt=False); MatryoshkaModel pools every token."
        )
    prompts = {name: text for name, text in st_model.prompts.items() if text}
    config = MatryoshkaConfig(
        encoder=exported["encoder_config"],
        matryoshka_dimensions=matryoshka_dimensions or exported["matryoshka_dimensions"],
        matryoshka_weights=matryoshka_weights,
        truncate_dim=truncate_dim if truncate_dim is not None else exported["truncate_dim"],
        # ranges of the nesting they were calibrated for; a new nesting starts uncalibrated
        quantization_ranges=exported["quantization_ranges"] if not matryoshka_dimensions else None,
        projection_dim=projection.out_features if projection is not None else None,
        pooling=POOLING_FROM_SENTENCE_TRANSFORMERS[pooling.pooling_mode],
        normalize=any(isinstance(m, Normalize) for m in modules),
        max_seq_length=st_model.max_seq_length,
        # Kept in config.json so that save_pretrained writes them back to config_sentence_transformers.json.
        prompts=prompts or None,
        default_prompt_name=st_model.default_prompt_name,
        similarity_fn_name=st_model.similarity_fn_name,
    )
    # A fresh encoder without the pooler sentence-transformers never uses (an unused pooler breaks DDP), with the
    # loaded weights copied in: the new model shares no tensors with `st_model`.
    new_encoder = build_encoder(config.encoder).to(encoder.dtype)
    missing, _ = new_encoder.load_state_dict(encoder.state_dict(), strict=False)
    if missing:
        raise ValueError(f"Could not copy the weights of {source!r}: the encoder lacks {sorted(missing)[:5]}.")
    model = model_class(config, encoder=new_encoder)
    model.config.encoder._name_or_path = portable_name(encoder.config._name_or_path)  # the card's base model
    if projection is not None:
        model.projection.load_state_dict(projection.state_dict())
    model.tokenizer = st_model.tokenizer
    return model.eval()


__all__ = ["MatryoshkaTruncation", "from_sentence_transformer"]
