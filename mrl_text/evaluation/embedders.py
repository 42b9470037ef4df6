"""Models as the evaluators see them: anything that embeds text becomes an [`Embedder`] with a full-size `encode`.

[`as_embedder`] loads a Matryoshka model, a plain transformers encoder or a sentence-transformers model (object,
folder or hub id) and wraps it with one set of encoding settings: every model in one evaluation reads its texts at
the same `max_length`, so the comparison is on equal terms.
"""

import contextlib
import json
import numbers
import os
import warnings
from pathlib import Path

import torch

from ..models.configuration_matryoshka import check_dim, portable_name
from ..models.modeling_matryoshka import MatryoshkaModel, truncate_embeddings

DEFAULT_BATCH_SIZE = 32
# 256 tokens: sentence-transformers' own limit for all-MiniLM-L6-v2 and most of its models, longer than every STS
# pair and classification text, and it covers most of a BEIR abstract at a quarter of the attention cost of 512.
DEFAULT_MAX_LENGTH = 256
# Tokenizers without a real limit report a huge sentinel (int(1e30)); such a value says nothing about the model.
_NO_LIMIT = 1_000_000


class Embedder:
    """A model as the evaluators see it: `encode(texts)` gives full-size float embeddings `(n, full_dim)`.

    Attributes:
        dims (`list[int]`): the sizes to score, largest first.
        normalize (`bool`): whether the model's embeddings are unit length; truncated prefixes are then
            re-normalized (what the model itself returns at that size).
        name (`str`): the model's name in result tables: a Hub id, or a local folder's portable name (the Hub id
            its card names, else the folder's name; never this machine's path).
        full_dim (`int`): the embedding size.
        max_length (`int` or `None`): the longest tokenized input the model reads here (None: unknown, e.g. a
            user's own `encode_fn`).
        batch_size (`int` or `None`): texts per `encode_fn` call, longest first (so batches pad little);
            None hands all texts to `encode_fn` at once.
        count_tokens (callable or `None`): `texts -> token counts` (as read, truncated at `max_length`); batches
            are then formed by tokens, not characters, so they pad almost nothing (a quarter of the tokens of a
            character-sorted short-text batch are padding, and padding costs as much as text).
        show_progress_bar (`bool`): whether the evaluators show a bar per task.
        source (`str` or `None`): the absolute path of the local folder the model was loaded from (None: not a
            folder); [`name_apart`] uses it to tell apart two folders of the same name.
        size_map (callable or `None`): `(full_embeddings, dim) -> embeddings at dim` when a size is more than a
            prefix (a `MatryoshkaModel` with an adaptor: `encode` then gives the pre-adaptor vectors); None:
            truncation.
    """

    def __init__(
        self, encode_fn, full_dim, dims, normalize, name, max_length=None, batch_size=None, show_progress_bar=False,
        source=None, count_tokens=None, size_map=None,
    ):
        self._encode_fn = encode_fn
        self.full_dim = int(full_dim)
        self.dims = check_dims(dims, self.full_dim, name)
        self.normalize = bool(normalize)
        self.name = str(name)
        self.max_length = max_length
        self.batch_size = batch_size
        self.show_progress_bar = bool(show_progress_bar)
        self.source = source
        self.count_tokens = count_tokens
        self.size_map = size_map
        self._progress = None

    def with_dims(self, dims):
        """The same model scored at other sizes."""
        return Embedder(
            self._encode_fn, self.full_dim, dims, self.normalize, self.name, self.max_length, self.batch_size,
            self.show_progress_bar, self.source, self.count_tokens, self.size_map,
        )

    @contextlib.contextmanager
    def progress_to(self, bar):
        """Within the block, `encode` advances the tqdm `bar` by one step per batch (None: no bar)."""
        previous, self._progress = self._progress, bar
        try:
            yield bar
        finally:
            self._progress = previous

    def encode(self, texts):
        """Full-size embeddings of `texts` as a CPU float tensor `(len(texts), full_dim)`, in the input order."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.full_dim)
        if self.batch_size is None:
            embeddings = self._encode_batch(texts)
            if self._progress is not None:
                self._progress.update(1)
            return embeddings
        batches = self.batches(texts)
        if self._progress is not None:
            self._progress.total = (self._progress.total or 0) + len(batches)
            self._progress.refresh()
        embeddings = torch.empty(len(texts), self.full_dim)
        for rows in batches:
            embeddings[rows] = self._encode_batch([texts[i] for i in rows])
            if self._progress is not None:
                self._progress.update(1)
        return embeddings

    def batches(self, texts):
        """The row indices of each `encode_fn` call: longest first (by tokens when the embedder can count them), so
        each batch pads to similar lengths and the slowest batches come first (an honest ETA)."""
        lengths = self.count_tokens(texts) if self.count_tokens is not None else [len(text) for text in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        return [order[start : start + self.batch_size] for start in range(0, len(texts), self.batch_size)]

    def _encode_batch(self, texts):
        with torch.inference_mode():
            embeddings = torch.as_tensor(self._encode_fn(texts)).float().cpu()
        if embeddings.shape != (len(texts), self.full_dim):
            raise ValueError(
                f"{self.name}: encoding {len(texts)} texts gave shape {tuple(embeddings.shape)}, expected "
                f"({len(texts)}, {self.full_dim})."
            )
        # Inference tensors cannot be used in autograd later; a plain copy keeps the evaluators free to do anything.
        return embeddings.clone()

    def truncate(self, embeddings, dim):
        """The model's embedding at size `dim`, from the full-size embeddings `encode` gives."""
        if self.size_map is not None:
            return self.size_map(embeddings, dim)
        return truncate_embeddings(embeddings, dim, self.normalize)

    def unit(self, embeddings, dim):
        """The model's embedding at size `dim`, unit length (what cosine similarity compares)."""
        if self.size_map is not None:
            return truncate_embeddings(self.size_map(embeddings, dim), None, True)
        return truncate_embeddings(embeddings, dim, True)

    def __repr__(self):
        return (
            f"Embedder(name={self.name!r}, full_dim={self.full_dim}, dims={self.dims}, normalize={self.normalize}, "
            f"max_length={self.max_length})"
        )


def check_dims(dims, full_dim, name):
    """`dims` as a sorted (largest first) list of distinct sizes, each a positive integer <= `full_dim`."""
    if isinstance(dims, int):
        dims = [dims]
    dims = list(dims)
    if not dims:
        raise ValueError(f"{name}: no sizes to evaluate; pass dims such as [{full_dim}, 64].")
    return sorted({check_dim(dim, full_dim, owner=f"{name}: size") for dim in dims}, reverse=True)


def check_max_length(max_length):
    """`max_length` as a positive int (None: [`DEFAULT_MAX_LENGTH`])."""
    if max_length is None:
        return DEFAULT_MAX_LENGTH
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length <= 0:
        raise ValueError(f"max_length={max_length!r} must be a positive number of tokens, e.g. {DEFAULT_MAX_LENGTH}.")
    return int(max_length)


def model_file(name_or_path, filename):
    """Path of `filename` in a local model folder or a Hub repository (cache first; None when it has none)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path / filename if (path / filename).is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(name_or_path), filename))
    except Exception:  # absent file, unknown repo, or offline without a cached copy: all mean "not there"
        return None


def load_model(name_or_path, device=None):
    """A MatryoshkaModel, SentenceTransformer or plain encoder (as a one-size MatryoshkaModel) from a folder or id."""
    config_file = model_file(name_or_path, "config.json")
    modules_file = model_file(name_or_path, "modules.json")
    if config_file is None and modules_file is None:
        raise FileNotFoundError(
            f"{name_or_path}: not a model folder (no config.json or modules.json) and not found on the Hub or in "
            "its cache; pass a MatryoshkaModel folder, a transformers encoder, or a sentence-transformers model."
        )
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type") if config_file else None
    except (ValueError, AttributeError) as error:  # not JSON, not UTF-8, or not a JSON object
        raise ValueError(f"{config_file}: not a valid config ({error}); the file is damaged: copy it again from where "
                         "the model came from, or save the model again.") from None
    if model_type == "matryoshka":
        model = MatryoshkaModel.from_pretrained(name_or_path)
    elif modules_file is not None:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(name_or_path), device=device)
    else:
        # A plain encoder: mean pooling and unit length, the usual sentence-embedding recipe, via the one model class.
        model = MatryoshkaModel.from_encoder(str(name_or_path), pooling="mean", normalize=True)
        # scored at its full size unless sizes are asked for: it was not trained at smaller ones
        model.config.matryoshka_dimensions, model.config.matryoshka_weights = [model.config.embedding_size], [1.0]
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def fit_max_length(max_length, name, tokenizer, encoder_config):
    """`max_length` (None: [`DEFAULT_MAX_LENGTH`]) lowered to what the model can read (its tokenizer's and position
    limits); lowering a value the caller chose warns, since that model then reads less than the others."""
    chosen = max_length is not None
    max_length = check_max_length(max_length)
    limits = [getattr(tokenizer, "model_max_length", None), getattr(encoder_config, "max_position_embeddings", None)]
    limits = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < _NO_LIMIT]
    if limits and min(limits) < max_length and chosen:
        warnings.warn(
            f"{name} reads at most {min(limits)} tokens; it is evaluated at {min(limits)} instead of max_length="
            f"{max_length}, unlike models that read more.",
            stacklevel=3,
        )
    return min([max_length, *limits])


def token_counter(tokenizer, max_length):
    """`texts -> token counts` as a transformers `tokenizer` reads them at `max_length` (None for other tokenizers).

    Batched calls of the fast tokenizer (no padding, no model): a small fraction of the cost of encoding the texts.
    """
    from transformers import PreTrainedTokenizerBase

    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        return None

    def count_tokens(texts, chunk=10_000):  # in chunks: a large corpus's token ids never sit in memory at once
        texts, counts = list(texts), []
        for start in range(0, len(texts), chunk):
            ids = tokenizer(
                texts[start : start + chunk], truncation=True, max_length=max_length, return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            counts += [len(row) for row in ids]
        return counts

    return count_tokens


def _sentence_transformer_embedder(model, dims, batch_size, max_length, device, show_progress_bar, name):
    # Only the encoder's position limit counts: the tokenizer's model_max_length is the pipeline's own setting
    # (sentence-transformers saves max_seq_length there), which is what max_length replaces.
    encoder_config = getattr(getattr(model[0], "auto_model", None), "config", None)
    max_length = fit_max_length(max_length, name, None, encoder_config)
    model.max_seq_length = max_length
    normalize = any(
        type(module).__name__ == "Normalize" or getattr(module, "normalize", None) is True for module in model
    )
    nested = next(
        (
            module.config.matryoshka_dimensions
            for module in model.modules()
            if hasattr(getattr(module, "config", None), "matryoshka_dimensions")
        ),
        None,
    )
    with model.truncate_embeddings(None):
        full_dim = max(nested) if nested else model.get_embedding_dimension()
    # A Matryoshka module inside the pipeline (mrl_text.models.sentence_transformers_matryoshka) takes `dim=` and may
    # otherwise apply the config's truncate_dim: ask it for the full size explicitly.
    size_kwargs = {"dim": full_dim} if "dim" in (model.get_model_kwargs() or []) else {}

    def encode(texts):
        with model.truncate_embeddings(None):  # full size: the evaluators truncate themselves
            return model.encode(
                texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False, device=device,
                **size_kwargs,
            )

    if full_dim is None:
        full_dim = encode(["a"]).shape[-1]
    return Embedder(
        encode, full_dim, dims or nested or [full_dim], normalize, name, max_length, batch_size, show_progress_bar,
        count_tokens=token_counter(getattr(model, "tokenizer", None), max_length),
    )


def as_embedder(
    model, dims=None, batch_size=DEFAULT_BATCH_SIZE, max_length=None, device=None, show_progress_bar=False
):
    """Wrap any supported model as an [`Embedder`] (full-size `encode`, the sizes to score, `normalize`, `name`).

    Args:
        model: a `MatryoshkaModel` (or a task model holding one), a folder or hub id of a Matryoshka model, a plain
            transformers encoder folder or hub id (mean pooling, unit length), a `SentenceTransformer` or its
            folder / hub id, or an `Embedder` (returned as it is, scored at `dims`).
        dims (`list[int]`, *optional*): sizes to score; defaults to the config's `matryoshka_dimensions`, else the
            full size. A size larger than the model's raises a `ValueError` naming it.
        batch_size (`int`): texts per forward pass, longest first.
        max_length (`int`, *optional*): longest tokenized input, for every kind of model alike (a
            sentence-transformers model's `max_seq_length` is set to it); default: a `MatryoshkaModel`'s saved
            `config.max_seq_length` when it has one (so a loaded folder reproduces its card), else
            [`DEFAULT_MAX_LENGTH`] (256) for every other model, whatever its own setting. A model that reads fewer
            tokens is evaluated at its own limit (with a warning when you chose `max_length`).
        device (`str`, *optional*): where to encode; default CUDA when available.
        show_progress_bar (`bool`): a progress bar per evaluated task.
    """
    if isinstance(model, Embedder):
        return model if dims is None else model.with_dims(dims)
    check_max_length(max_length)  # fails early with a clear message, before any model is loaded
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer, e.g. {DEFAULT_BATCH_SIZE}.")
    name = source = None
    if isinstance(model, (str, os.PathLike)):
        name, source = portable_name(model), local_folder(model)
        model = load_model(model, device)
    if isinstance(getattr(model, "matryoshka", None), MatryoshkaModel):  # e.g. MatryoshkaForSequenceClassification
        model = model.matryoshka
    if isinstance(model, MatryoshkaModel):
        if device is not None:
            model = model.to(device)
        config = model.config
        source = source or local_folder(model.name_or_path)
        name = name or (portable_name(model.name_or_path) if model.name_or_path else "MatryoshkaModel")
        if max_length is None:  # the length its card's numbers were computed at, saved with it: they reproduce
            max_length = config.max_seq_length
        max_length = fit_max_length(max_length, name, model.tokenizer, config.encoder)

        # With an adaptor a size is not a prefix of the full size: encode the pre-adaptor vectors once and let the
        # model map them to each size (`embeddings_at_size`), exactly as encode(dim=) would.
        output_value = "embeddings" if model.adaptor is None else "full_embeddings"

        def encode(texts):
            return model.encode(texts, dim=config.embedding_size, batch_size=batch_size, max_length=max_length,
                                output_value=output_value)

        def size_map(embeddings, dim):
            with torch.no_grad():
                return model.embeddings_at_size(embeddings.to(model.device, model.dtype), dim).float().cpu()

        return Embedder(
            encode, config.embedding_size, dims or config.matryoshka_dimensions, config.normalize, name, max_length,
            batch_size, show_progress_bar, source, token_counter(model.tokenizer, max_length),
            size_map if model.adaptor is not None else None,
        )
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # pragma: no cover - sentence-transformers is a dependency
        SentenceTransformer = ()
    if isinstance(model, SentenceTransformer):
        name = name or getattr(model.model_card_data, "base_model", None) or "SentenceTransformer"
        embedder = _sentence_transformer_embedder(model, dims, batch_size, max_length, device, show_progress_bar, name)
        embedder.source = source
        return embedder
    raise TypeError(
        f"Cannot evaluate a {type(model).__name__}; pass a MatryoshkaModel, a SentenceTransformer, a model folder or "
        "hub id, or an Embedder."
    )


def local_folder(name_or_path):
    """The absolute path of a local model folder (None for a Hub id or nothing)."""
    return os.path.abspath(name_or_path) if name_or_path and os.path.isdir(name_or_path) else None


def name_apart(embedders):
    """Give every embedder of one results table a distinct `name`, in place.

    Different local folders that share a name (`run1/model`, `run2/model`) are named by the shortest ending of their
    paths that tells them apart, which `mrl-text card` still matches to its folder; any other repeat (the same
    model twice, a folder named like a Hub id also evaluated) gets " (2)", " (3)", ...
    """
    groups = {}
    for embedder in embedders:
        groups.setdefault(embedder.name, []).append(embedder)
    for group in groups.values():
        folders = {Path(e.source).parts for e in group if e.source}
        if len(folders) > 1:
            depth = 2
            while len({parts[-depth:] for parts in folders}) < len(folders):
                depth += 1
            for embedder in group:
                if embedder.source:
                    embedder.name = Path(*Path(embedder.source).parts[-depth:]).as_posix()
    taken = set()
    for embedder in embedders:
        base, n = embedder.name, 2
        while embedder.name in taken:
            embedder.name, n = f"{base} ({n})", n + 1
        taken.add(embedder.name)
    return embedders


def encode_once(embedder, texts):
    """Encode the distinct texts of `texts` in one `embedder.encode`; returns `(embeddings, row of each text)`."""
    index = {}
    for text in texts:
        index.setdefault(text, len(index))
    embeddings = embedder.encode(list(index))
    return embeddings, torch.tensor([index[text] for text in texts], dtype=torch.long)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_LENGTH",
    "Embedder",
    "as_embedder",
    "check_dims",
    "check_max_length",
    "encode_once",
    "fit_max_length",
    "load_model",
    "local_folder",
    "model_file",
    "name_apart",
    "token_counter",
]
