"""Matryoshka embedding models: any Hugging Face encoder whose embedding prefixes are embeddings too.

Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022 (https://arxiv.org/abs/2205.13147).

This file imports only torch, transformers, huggingface_hub and its sibling files (relative imports),
and no private transformers API, so that ``save_pretrained`` copies it next to the weights and
``trust_remote_code=True`` loads a saved model on a machine without mrl-text.
"""

import inspect
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_matryoshka import MatryoshkaConfig, check_dim
from .modeling_matryoshka_adaptor import MatryoshkaAdaptor, MatryoshkaAdaptorConfig
from .modeling_matryoshka_depth import check_layers, first_layers, layer_stack, pool_layers
from .modeling_matryoshka_utils import (
    build_encoder,
    check_model_folder,
    config_to_wrap,
    hub_kwargs,
    pool,
    resolve_tokenizer,
    truncate_embeddings,
    warn_once,
)
from .quantization import calibrate, check_precision, model_ranges, quantize


@dataclass
class MatryoshkaModelOutput(ModelOutput):
    """
    Output of [`MatryoshkaModel`].

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, dim)`):
            Pooled (and projected) embeddings truncated to `dim` (or the config's `truncate_dim`), re-normalized
            after truncation when the config normalizes.
        full_embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_size)`):
            Pooled (and projected) embeddings at full size, *not* normalized: the losses slice every nested
            prefix from this one tensor and normalize each prefix themselves. Taken before the adaptor (if any),
            whose map depends on the size (see `MatryoshkaAdaptor.at_size`).
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Token states of the encoder's last layer.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): every layer's token states when requested.
        attentions (`tuple(torch.FloatTensor)`, *optional*): attention weights when requested.
        layer_embeddings (`dict[int, torch.FloatTensor]`, *optional*): with `output_layer_embeddings`, the full-size
            (not normalized) embedding after each requested depth, pooled from the same pass (2D Matryoshka).
    """

    embeddings: Optional[torch.FloatTensor] = None
    full_embeddings: Optional[torch.FloatTensor] = None
    last_hidden_state: Optional[torch.FloatTensor] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    layer_embeddings: Optional[dict] = None


class MatryoshkaPreTrainedModel(PreTrainedModel):
    config_class = MatryoshkaConfig
    config: MatryoshkaConfig
    base_model_prefix = "matryoshka"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    # Writers of extra files (model card and plot, sentence-transformers files) run after every save. mrl-text
    # registers them here (mrl_text/__init__.py); where only transformers is installed (trust_remote_code) the list
    # is empty and saving and pushing behave exactly as in transformers.
    save_hooks = []

    def _resolve_dim(self, dim):
        """`dim` if given, else the config's `truncate_dim`; checked, with a warning (once) for untrained sizes."""
        dim = self.config.truncate_dim if dim is None else dim
        trained = self.config.matryoshka_dimensions
        dim = check_dim(dim, self.config.embedding_size, trained)
        if dim is not None and dim not in trained:
            warn_once(
                self,
                "dims",
                dim,
                f"dim={dim} is not one of the trained sizes {trained}; its prefix works but was "
                "not trained as an embedding. Prefer a trained size.",
                stacklevel=3,
            )
        return dim

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, after a local folder is checked (`check_model_folder`): a missing folder,
        a damaged config.json, an exported or plain encoder folder and missing weights get errors naming the path
        and the fix."""
        if not any(key in kwargs for key in ("gguf_file", "state_dict")):
            folder = pretrained_model_name_or_path
            if kwargs.get("subfolder") and folder is not None:
                folder = os.path.join(folder, kwargs["subfolder"])
            check_model_folder(folder, cls.config_class.model_type, check_type="config" not in kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # The tokenizer travels with the model: saved by save_pretrained, found again (lazily) from the folder or hub
    # id the model was loaded from.
    @property
    def tokenizer(self):
        if getattr(self, "_tokenizer", None) is None and self.name_or_path:
            try:
                # Given the encoder's config, AutoTokenizer never reads this folder's config.json, whose `auto_map`
                # would make it ask (interactively, where mrl-text is not installed) whether to run remote code.
                self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, config=self.config.encoder)
            except (OSError, ValueError):
                self._tokenizer = False  # nothing to load; don't retry on every call
        return getattr(self, "_tokenizer", None) or None

    @tokenizer.setter
    def tokenizer(self, value):
        self._tokenizer = value

    def save_pretrained(self, save_directory, *args, push_to_hub=False, **kwargs):
        """transformers' `save_pretrained`, plus the tokenizer and the files of every save hook (model card, ...);
        with `push_to_hub=True` the folder is uploaded after all of them are written."""
        hub_options = {key: kwargs.pop(key) for key in PUSH_OPTIONS if key in kwargs}
        if getattr(self, "adaptor", None) is not None:  # its config may have changed since it was set (a refit)
            self.config.adaptor = self.adaptor.config.to_dict()
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            if getattr(self, "tokenizer", None) is not None:
                self.tokenizer.save_pretrained(save_directory)
            for hook in self.save_hooks:
                hook(self, save_directory)
            if push_to_hub:
                repo_id = hub_options.pop("repo_id", None) or os.path.basename(os.path.normpath(save_directory))
                self.push_to_hub(repo_id, **hub_options)

    def push_to_hub(self, repo_id, *, commit_message=None, commit_description=None, private=None, token=None,
                    revision=None, create_pr=False, max_shard_size="50GB", tags=None):
        """Upload the saved model (weights, config with `auto_map`, modeling code, tokenizer, hook files) in one
        commit with `HfApi.upload_folder`. A model card written by a save hook (mrl-text's, with the per-size
        results and plot) is uploaded as is; without one, transformers' generic card is used."""
        from huggingface_hub import HfApi
        from transformers.utils.hub import create_and_tag_model_card

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as work_dir:
            self.save_pretrained(work_dir, max_shard_size=max_shard_size)
            for hook in self.save_hooks:  # again, now that the repository id is known (the card's usage snippets)
                hook(self, work_dir, repo_id=repo_id)
            card_path = os.path.join(work_dir, "README.md")
            if not os.path.exists(card_path):
                create_and_tag_model_card(repo_id, tags, token=token).save(card_path)
            return api.upload_folder(
                repo_id=repo_id, folder_path=work_dir, commit_message=commit_message or "Upload model",
                commit_description=commit_description, revision=revision, create_pr=create_pr,
            )


# `save_pretrained(..., push_to_hub=True, **these)` hands these to `push_to_hub`.
PUSH_OPTIONS = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr", "tags")


class MatryoshkaModel(MatryoshkaPreTrainedModel):
    r"""
    A Hugging Face encoder whose pooled embedding is a Matryoshka embedding: its first `d` coordinates are an
    embedding for every `d` in `config.matryoshka_dimensions`.

    Build it around a pretrained encoder with [`MatryoshkaModel.from_encoder`], or load a saved one with
    `from_pretrained` / `AutoModel.from_pretrained` (after `import mrl_text`, or with `trust_remote_code=True`).

    Example:

    ```python
    >>> import mrl_text
    >>> model = mrl_text.MatryoshkaModel.from_encoder("bert-base-uncased", matryoshka_dimensions=[768, 256, 64])
    >>> model.encode(["a sentence"], dim=64).shape
    torch.Size([1, 64])
    ```
    """

    def __init__(self, config, encoder=None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else build_encoder(config.encoder)
        # One config object for the wrapper and the encoder, so edits to either are saved.
        self.config.encoder = self.encoder.config
        hidden = getattr(self.encoder.config, "hidden_size", None)
        self.projection = (
            nn.Linear(hidden, config.projection_dim) if config.projection_dim is not None else None
        )
        parameters = inspect.signature(self.encoder.forward).parameters
        self._encoder_kwargs = set(parameters)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            # transformers 5 encoders take these through **kwargs: not named in the signature, still honoured.
            self._encoder_kwargs |= {"output_hidden_states", "output_attentions"}
        self._tokenizer = None
        self.adaptor = None
        self.post_init()
        if config.adaptor is not None:  # after post_init, whose weight init would undo its identity start
            self.set_adaptor(MatryoshkaAdaptor(MatryoshkaAdaptorConfig.from_dict(config.adaptor)))

    def set_adaptor(self, adaptor):
        """Use `adaptor` (a `MatryoshkaAdaptor` fit on this model's embeddings; None removes it) after pooling and
        projection, before truncation; its config goes to `config.adaptor`. `model.add_adaptor` fits one.

        It is frozen here: training losses read `full_embeddings`, taken before it, so its weights would get no
        gradient (and DDP refuses parameters that get none)."""
        self.config.adaptor = self.config.check_adaptor(adaptor.config.to_dict() if adaptor is not None else None)
        self.adaptor = adaptor.to(self.device, self.dtype).requires_grad_(False) if adaptor is not None else None

    @classmethod
    def from_encoder(
        cls,
        encoder_name_or_path,
        matryoshka_dimensions=None,
        matryoshka_weights=None,
        truncate_dim=None,
        pooling="mean",
        normalize=True,
        projection_dim=None,
        max_seq_length=None,
        tokenizer=True,
        matryoshka_layers=None,
        **from_pretrained_kwargs,
    ):
        """Wrap a pretrained encoder (hub id or local folder) in a new Matryoshka model.

        The encoder's weights are loaded (without its pooler); its tokenizer is loaded too when `tokenizer` is
        True (or use a tokenizer object / name). Keyword arguments such as `revision`, `cache_dir`, `dtype` or
        `trust_remote_code` go to the encoder's `from_pretrained`. See [`MatryoshkaConfig`] for the rest.
        """
        config_kwargs = hub_kwargs(from_pretrained_kwargs)
        encoder_config = config_to_wrap(encoder_name_or_path, config_kwargs)
        config = MatryoshkaConfig(
            encoder=encoder_config,
            matryoshka_dimensions=matryoshka_dimensions,
            matryoshka_weights=matryoshka_weights,
            truncate_dim=truncate_dim,
            pooling=pooling,
            normalize=normalize,
            projection_dim=projection_dim,
            max_seq_length=max_seq_length,
            matryoshka_layers=matryoshka_layers,
        )
        encoder = build_encoder(encoder_config, encoder_name_or_path, **from_pretrained_kwargs)
        model = cls(config, encoder=encoder)
        model.tokenizer = resolve_tokenizer(tokenizer, encoder_name_or_path, config_kwargs)
        return model

    def freeze_layers(self, num_layers):
        """Freeze the encoder's embedding layer and its first `num_layers` transformer layers; returns the model.

        Only the layers above (and the projection) then train: a step back-propagates through fewer layers, and a
        small dataset moves fewer weights. The frozen part gets no gradient (`requires_grad=False`, so the trainer's
        optimizer leaves it out) and runs in eval mode even while the model trains (no dropout), so it computes
        exactly what it computed before training. `freeze_layers(0)` unfreezes everything. Supported for the encoder
        types that `layers=` supports (`LAYER_STACKS`: the BERT family).

        Example:

        ```python
        >>> model = MatryoshkaModel.from_encoder("bert-base-uncased", matryoshka_dimensions=[768, 64])
        >>> model = model.freeze_layers(10)  # the top two of BERT-base's 12 layers train
        ```
        """
        owner, name = layer_stack(self.encoder)
        stack = getattr(owner, name)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 0 <= num_layers <= len(stack):
            raise ValueError(
                f"freeze_layers({num_layers!r}): the encoder has {len(stack)} layers; freeze an integer number of "
                f"them from 0 (none) to {len(stack)} (all: only a projection trains)."
            )
        embeddings = getattr(self.encoder, "embeddings", None)
        if embeddings is None:
            raise ValueError(f"freeze_layers: {type(self.encoder).__name__} has no `embeddings` module to freeze.")
        self.requires_grad_(True)
        self._frozen_modules = [embeddings, *stack[:num_layers]] if num_layers else []
        for module in self._frozen_modules:
            module.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode=True):
        """`nn.Module.train`, except that the layers frozen by `freeze_layers` stay in eval mode."""
        super().train(mode)
        for module in getattr(self, "_frozen_modules", []):
            module.eval()
        return self

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.encoder.set_input_embeddings(value)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        dim=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        layers=None,
        output_layer_embeddings=None,
        **kwargs,
    ):
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids.
            attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`): 1 for real tokens.
            token_type_ids, position_ids, inputs_embeds: passed to the encoder when it accepts them.
            dim (`int`, *optional*): size of `embeddings`; defaults to the config's `truncate_dim` (full if None).
            layers (`int`, *optional*): run only the encoder's first `layers` layers (one of
                `config.matryoshka_layers`); None runs all of them.
            output_layer_embeddings (`list[int]`, *optional*): also return the full-size embedding after each of
                these depths (`layer_embeddings`), from this same pass (depth training).

        Returns:
            [`MatryoshkaModelOutput`] with `embeddings` `(batch_size, dim)` and `full_embeddings`
            `(batch_size, embedding_size)`.
        """
        dim = self._resolve_dim(dim)
        layers = check_layers(self, layers)
        if output_layer_embeddings:
            output_hidden_states = True
        if attention_mask is None:
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        encoder_inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
            "output_hidden_states": output_hidden_states,
            "output_attentions": output_attentions,
            **kwargs,
        }
        encoder_inputs = {
            k: v for k, v in encoder_inputs.items() if v is not None and k in self._encoder_kwargs
        }
        with first_layers(self.encoder, layers):
            outputs = self.encoder(**encoder_inputs, return_dict=True)
        pooled = pool(outputs.last_hidden_state, attention_mask, self.config.pooling)
        if self.projection is not None:
            pooled = self.projection(pooled)
        embeddings = self.embeddings_at_size(pooled, dim)
        result = MatryoshkaModelOutput(
            embeddings=embeddings,
            full_embeddings=pooled,
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )
        if output_layer_embeddings:
            result.layer_embeddings = pool_layers(
                result.hidden_states, attention_mask, self.config.pooling, self.projection, output_layer_embeddings
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return result if return_dict else result.to_tuple()

    def embeddings_at_size(self, full_embeddings, dim=None):
        """The size-`dim` embedding from `forward`'s pooled, pre-adaptor `full_embeddings` (also
        `encode(..., output_value="full_embeddings")`): the adaptor's map at that size when the model has one, then
        truncation (and re-normalization). Encode once, read every size exactly as `encode(dim=)` returns it."""
        if self.adaptor is not None:
            full_embeddings = self.adaptor.at_size(full_embeddings, dim, self.config.normalize)
        return truncate_embeddings(full_embeddings, dim, self.config.normalize)

    @torch.inference_mode()
    def encode(
        self,
        texts,
        dim=None,
        batch_size=32,
        max_length=None,
        convert_to_numpy=False,
        show_progress_bar=False,
        device=None,
        precision="float32",
        layers=None,
        output_value="embeddings",
    ):
        """Embed texts at size `dim` (default: the config's `truncate_dim`, else full size).

        Args:
            texts (`str` or `list[str]`): one text or a list of texts.
            dim (`int`, *optional*): size of the returned embeddings.
            batch_size (`int`): texts per forward pass. Texts are sorted by length to pad less, and returned in
                the input order.
            max_length (`int`, *optional*): longest tokenized input; defaults to the config's `max_seq_length`,
                else the tokenizer's limit.
            convert_to_numpy (`bool`): return a numpy array instead of a tensor.
            show_progress_bar (`bool`): show a tqdm bar over batches.
            device: where to run; defaults to the model's device.
            precision (`str`): `"float32"`, `"int8"`, `"uint8"` (per-coordinate ranges from
                `calibrate_quantization`), `"binary"` or `"ubinary"` (sign bits packed into `dim / 8` bytes); the codes
                of sentence-transformers' `quantize_embeddings` (see `mrl_text.models.quantization`).
            layers (`int`, *optional*): run only the first `layers` encoder layers (2D Matryoshka; one of
                `config.matryoshka_layers`); None: full depth.
            output_value (`str`): `"embeddings"`, or `"full_embeddings"`: the pooled full-size vectors before any
                adaptor and normalization (`dim` and `precision` then do not apply), from which
                [`embeddings_at_size`] gives every size.

        Returns:
            `torch.Tensor` (CPU) or `numpy.ndarray` of shape `(len(texts), dim)` (`dim / 8` for bit codes); a single
            `str` gives one row.
        """
        if self.tokenizer is None:
            raise ValueError(
                "This model has no tokenizer: build it with MatryoshkaModel.from_encoder(...), load it from a folder "
                "that holds one, or set `model.tokenizer = AutoTokenizer.from_pretrained(...)`."
            )
        if output_value not in ("embeddings", "full_embeddings"):
            raise ValueError(f"output_value={output_value!r}; use 'embeddings' or 'full_embeddings'.")
        if output_value == "full_embeddings":
            dim, precision = self.config.embedding_size, "float32"
        dim = self._resolve_dim(dim)
        size = dim or self.config.embedding_size
        layers = check_layers(self, layers)
        ranges = model_ranges(self.config, size, check_precision(precision, size), layers)  # fail before encoding
        single = isinstance(texts, str)
        try:
            texts = [texts] if single else list(texts)
        except TypeError:  # None, a number, ...: reported below
            texts = [texts]
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise ValueError(f"encode() takes a string or a list of strings; got {type(bad[0]).__name__} {bad[0]!r}.")
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}={value!r} must be a positive integer (max_length may be None).")
        max_length = max_length or self.config.max_seq_length
        device = device or self.device
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batches = range(0, len(texts), batch_size)
        if show_progress_bar:
            # transformers' bar (tqdm underneath) keeps this folder's imports to transformers and honours its
            # `disable_progress_bar()`.
            from transformers.utils.logging import tqdm

            batches = tqdm(batches, desc="Encoding", unit="batch")
        chunks = []
        for start in batches:
            batch = [texts[i] for i in order[start : start + batch_size]]
            inputs = self.tokenizer(
                batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            outputs = self(**inputs, dim=dim, layers=layers)
            chunks.append(getattr(outputs, output_value).float().cpu())
        self.train(was_training)
        if chunks:
            stacked = torch.cat(chunks)
            embeddings = torch.empty_like(stacked)
            embeddings[torch.tensor(order)] = stacked
        else:
            embeddings = torch.empty(0, size)
        embeddings = quantize(embeddings, precision, ranges)
        if single:
            embeddings = embeddings[0]
        return embeddings.numpy() if convert_to_numpy else embeddings

    def calibrate_quantization(self, texts, dims=None, layers=None, **encode_kwargs):
        """Measure the int8/uint8 ranges of every trained size (or `dims`) on `texts`, at every trained depth
        (`config.matryoshka_layers`, or `layers`), and keep them in the config (`quantization_ranges`, saved in
        config.json), so `encode(..., precision="int8", layers=k)` and every copy of the saved model make the same
        codes. One encoding pass per depth (see `mrl_text.models.quantization.calibrate`); `encode_kwargs` go to
        `encode`.
        Returns the ranges by size (`(layers, size)` for shallower depths)."""
        return calibrate(self, texts, dims, layers, **encode_kwargs)


__all__ = [
    "MatryoshkaModel",
    "MatryoshkaModelOutput",
    "MatryoshkaPreTrainedModel",
    "build_encoder",
    "config_to_wrap",
    "hub_kwargs",
    "pool",
    "resolve_tokenizer",
    "truncate_embeddings",
]
