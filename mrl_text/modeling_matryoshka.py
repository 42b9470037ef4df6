"""Matryoshka embedding models: any Hugging Face encoder whose embedding prefixes are embeddings too.

Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022 (https://arxiv.org/abs/2205.13147).

This file imports only torch, transformers and its sibling configuration file (relative import), so that
``save_pretrained`` copies it next to the weights and ``trust_remote_code=True`` loads a saved model on a
machine without mrl-text.
"""

import inspect
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_matryoshka import MatryoshkaConfig


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
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim={dim!r} is not a positive integer; pass a size such as 64 (or None for full size).")
        if dim > full:
            raise ValueError(f"dim={dim} is larger than the embedding size {full}; use a size <= {full}.")
    if not isinstance(embeddings, torch.Tensor):  # numpy (or anything torch can view without a copy)
        return truncate_embeddings(torch.as_tensor(embeddings), dim, normalize).numpy()
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


def _build_encoder(encoder_config, pretrained_name_or_path=None, **from_pretrained_kwargs):
    """Build (or load) the wrapped encoder without its pooler: an unused pooler breaks DDP and costs time."""
    model_class = AutoModel._model_mapping[type(encoder_config)]
    kwargs = {}
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    if pretrained_name_or_path is None:
        return model_class(encoder_config, **kwargs)
    return model_class.from_pretrained(
        pretrained_name_or_path, config=encoder_config, **kwargs, **from_pretrained_kwargs
    )


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
            prefix from this one tensor and normalize each prefix themselves.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Token states of the encoder's last layer.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): every layer's token states when requested.
        attentions (`tuple(torch.FloatTensor)`, *optional*): attention weights when requested.
    """

    embeddings: Optional[torch.FloatTensor] = None
    full_embeddings: Optional[torch.FloatTensor] = None
    last_hidden_state: Optional[torch.FloatTensor] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


@dataclass
class MatryoshkaSequenceClassifierOutput(ModelOutput):
    """
    Output of [`MatryoshkaForSequenceClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): weighted sum over sizes of the per-size loss.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): logits of the head at `dim` (or the
            config's `truncate_dim`, else full size): what inference uses.
        matryoshka_logits (`tuple(torch.FloatTensor)`): logits of every size, in `matryoshka_dimensions` order.
        embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_size)`): the full pooled embedding.
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    matryoshka_logits: Optional[tuple] = None
    embeddings: Optional[torch.FloatTensor] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


class MatryoshkaLinear(nn.Module):
    """Nested linear heads: logits for every prefix size of the input.

    MRL (`efficient=False`): one `nn.Linear(d, out_features)` per size `d`, applied to `x[:, :d]`.
    MRL-E (`efficient=True`): one weight `(out_features, max(dims))`; size `d` uses its first `d` columns, so the
    heads are weight-tied and cost no more parameters than a single full-size head.

    Args:
        dims (`list[int]`): the nested sizes.
        out_features (`int`): number of outputs (classes).
        efficient (`bool`): MRL-E weight tying.
        bias (`bool`): add a bias (one per size for MRL, shared for MRL-E).

    Shapes: `forward(x)` with `x` of shape `(batch, max(dims))` returns a tuple of `(batch, out_features)` tensors,
    one per size in `dims` order; `forward(x, dim=d)` returns the one tensor of size `d`.
    """

    def __init__(self, dims, out_features, efficient=False, bias=True):
        super().__init__()
        self.dims = [int(d) for d in dims]
        if not self.dims:
            raise ValueError("MatryoshkaLinear needs at least one size in `dims`.")
        self.out_features = out_features
        self.efficient = efficient
        self.in_features = max(self.dims)
        if efficient:
            self.linear = nn.Linear(self.in_features, out_features, bias=bias)
        else:
            self.heads = nn.ModuleList(nn.Linear(d, out_features, bias=bias) for d in self.dims)

    def extra_repr(self):
        return f"dims={self.dims}, out_features={self.out_features}, efficient={self.efficient}"

    def _logits_at(self, x, index):
        d = self.dims[index]
        if self.efficient:
            return F.linear(x[..., :d], self.linear.weight[:, :d], self.linear.bias)
        return self.heads[index](x[..., :d])

    def forward(self, x, dim=None):
        if x.shape[-1] < self.in_features:
            raise ValueError(
                f"MatryoshkaLinear expects inputs of size {self.in_features} (the largest of {self.dims}), got "
                f"{x.shape[-1]}; pass the full embedding, the heads slice it."
            )
        if dim is not None:
            if dim not in self.dims:
                raise ValueError(f"dim={dim!r} has no head; the heads' sizes are {self.dims}.")
            return self._logits_at(x, self.dims.index(dim))
        return tuple(self._logits_at(x, i) for i in range(len(self.dims)))


class MatryoshkaPreTrainedModel(PreTrainedModel):
    config_class = MatryoshkaConfig
    config: MatryoshkaConfig
    base_model_prefix = "matryoshka"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def _resolve_dim(self, dim):
        """`dim` if given, else the config's `truncate_dim`; checked against the trained sizes' range."""
        dim = self.config.truncate_dim if dim is None else dim
        if dim is not None:
            full = self.config.embedding_size
            if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim > full:
                raise ValueError(
                    f"dim={dim!r} is not a valid size for this model; use an integer in 1..{full}, ideally one "
                    f"of the trained sizes {self.config.matryoshka_dimensions}."
                )
        return dim

    # Writers of extra files (model card, results plot) run after every save. mrl-text registers its card writer
    # here (mrl_text.model_card); where only transformers is installed (trust_remote_code) the list is empty and
    # saving and pushing behave exactly as in transformers.
    save_hooks = []

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            for hook in self.save_hooks:
                hook(self, save_directory)

    def push_to_hub(self, repo_id, *, commit_message=None, commit_description=None, private=None, token=None,
                    revision=None, create_pr=False, max_shard_size="50GB", tags=None):
        """transformers' `push_to_hub` (one commit: weights, config with `auto_map`, modeling code, tokenizer), except
        that a model card written by a save hook (mrl-text's, with the per-size results and plot) is uploaded as is
        instead of being replaced by a generic card. Without one, the generic card is used as in transformers."""
        import os
        import tempfile

        from transformers.utils.hub import create_and_tag_model_card, hf_api

        repo_id = hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as work_dir:
            self.save_pretrained(work_dir, max_shard_size=max_shard_size)
            for hook in self.save_hooks:  # again, now that the repository id is known (the card's usage snippets)
                hook(self, work_dir, repo_id=repo_id)
            card_path = os.path.join(work_dir, "README.md")
            if not os.path.exists(card_path):
                create_and_tag_model_card(repo_id, tags, token=token).save(card_path)
            return self._upload_modified_files(
                work_dir, repo_id, files_timestamps={}, commit_message=commit_message, token=token,
                create_pr=create_pr, revision=revision, commit_description=commit_description,
            )


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
        self.encoder = encoder if encoder is not None else _build_encoder(config.encoder)
        # One config object for the wrapper and the encoder, so edits to either are saved.
        self.config.encoder = self.encoder.config
        hidden = getattr(self.encoder.config, "hidden_size", None)
        self.projection = (
            nn.Linear(hidden, config.projection_dim) if config.projection_dim is not None else None
        )
        self._encoder_kwargs = set(inspect.signature(self.encoder.forward).parameters)
        self._tokenizer = None
        self.post_init()

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
        **from_pretrained_kwargs,
    ):
        """Wrap a pretrained encoder (hub id or local folder) in a new Matryoshka model.

        The encoder's weights are loaded (without its pooler); its tokenizer is loaded too when `tokenizer` is
        True (or use a tokenizer object / name). Keyword arguments such as `revision`, `cache_dir`, `dtype` or
        `trust_remote_code` go to the encoder's `from_pretrained`. See [`MatryoshkaConfig`] for the rest.
        """
        from transformers import AutoConfig

        config_kwargs = {
            k: from_pretrained_kwargs[k]
            for k in ("revision", "cache_dir", "trust_remote_code", "token", "local_files_only")
            if k in from_pretrained_kwargs
        }
        encoder_config = AutoConfig.from_pretrained(encoder_name_or_path, **config_kwargs)
        if isinstance(encoder_config, MatryoshkaConfig):
            raise ValueError(
                f"{encoder_name_or_path!r} is already a Matryoshka model; load it with "
                "MatryoshkaModel.from_pretrained instead of from_encoder."
            )
        config = MatryoshkaConfig(
            encoder=encoder_config,
            matryoshka_dimensions=matryoshka_dimensions,
            matryoshka_weights=matryoshka_weights,
            truncate_dim=truncate_dim,
            pooling=pooling,
            normalize=normalize,
            projection_dim=projection_dim,
            max_seq_length=max_seq_length,
        )
        encoder = _build_encoder(encoder_config, encoder_name_or_path, **from_pretrained_kwargs)
        model = cls(config, encoder=encoder)
        if tokenizer is True:
            model.tokenizer = AutoTokenizer.from_pretrained(encoder_name_or_path, **config_kwargs)
        elif isinstance(tokenizer, str):
            model.tokenizer = AutoTokenizer.from_pretrained(tokenizer, **config_kwargs)
        elif tokenizer:
            model.tokenizer = tokenizer
        return model

    # The tokenizer travels with the model: saved by save_pretrained, found again (lazily) from the folder or hub
    # id the model was loaded from.
    @property
    def tokenizer(self):
        if self._tokenizer is None and self.name_or_path:
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            except (OSError, ValueError):
                self._tokenizer = False  # nothing to load; don't retry on every call
        return self._tokenizer or None

    @tokenizer.setter
    def tokenizer(self, value):
        self._tokenizer = value

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None and kwargs.get("is_main_process", True):
            self.tokenizer.save_pretrained(save_directory)

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
        **kwargs,
    ):
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids.
            attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`): 1 for real tokens.
            token_type_ids, position_ids, inputs_embeds: passed to the encoder when it accepts them.
            dim (`int`, *optional*): size of `embeddings`; defaults to the config's `truncate_dim` (full if None).

        Returns:
            [`MatryoshkaModelOutput`] with `embeddings` `(batch_size, dim)` and `full_embeddings`
            `(batch_size, embedding_size)`.
        """
        dim = self._resolve_dim(dim)
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
        outputs = self.encoder(**encoder_inputs, return_dict=True)
        pooled = pool(outputs.last_hidden_state, attention_mask, self.config.pooling)
        if self.projection is not None:
            pooled = self.projection(pooled)
        embeddings = truncate_embeddings(pooled, dim, self.config.normalize)
        result = MatryoshkaModelOutput(
            embeddings=embeddings,
            full_embeddings=pooled,
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return result if return_dict else result.to_tuple()

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

        Returns:
            `torch.Tensor` (CPU) or `numpy.ndarray` of shape `(len(texts), dim)`; a single `str` gives `(dim,)`.
        """
        if self.tokenizer is None:
            raise ValueError(
                "This model has no tokenizer: build it with MatryoshkaModel.from_encoder(...), load it from a folder "
                "that holds one, or set `model.tokenizer = AutoTokenizer.from_pretrained(...)`."
            )
        dim = self._resolve_dim(dim)
        single = isinstance(texts, str)
        if single:
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            bad = next(t for t in texts if not isinstance(t, str))
            raise ValueError(f"encode() takes strings; got {type(bad).__name__} {bad!r}.")
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
        max_length = max_length or self.config.max_seq_length
        device = device or self.device
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batches = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="Encoding", unit="batch")
        chunks = []
        for start in batches:
            batch = [texts[i] for i in order[start : start + batch_size]]
            inputs = self.tokenizer(
                batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            chunks.append(self(**inputs, dim=dim).embeddings.float().cpu())
        self.train(was_training)
        if chunks:
            stacked = torch.cat(chunks)
            embeddings = torch.empty_like(stacked)
            embeddings[torch.tensor(order)] = stacked
        else:
            embeddings = torch.empty(0, dim or self.config.embedding_size)
        if single:
            embeddings = embeddings[0]
        return embeddings.numpy() if convert_to_numpy else embeddings


class MatryoshkaForSequenceClassification(MatryoshkaPreTrainedModel):
    r"""
    A [`MatryoshkaModel`] with nested classification heads ([`MatryoshkaLinear`], MRL or MRL-E by
    `config.efficient_heads`) on the full pooled embedding (not normalized): logits for every size in
    `config.matryoshka_dimensions`, trained with the weighted sum of per-size losses (the paper's Matryoshka
    cross-entropy). Inference uses the head of `dim`, else `config.truncate_dim`, else full size.
    """

    def __init__(self, config, encoder=None):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.matryoshka = MatryoshkaModel(config, encoder=encoder)
        self.classifier = MatryoshkaLinear(
            config.matryoshka_dimensions, config.num_labels, efficient=config.efficient_heads
        )
        self.post_init()

    @property
    def tokenizer(self):
        return self.matryoshka.tokenizer

    @tokenizer.setter
    def tokenizer(self, value):
        self.matryoshka.tokenizer = value

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None and kwargs.get("is_main_process", True):
            self.tokenizer.save_pretrained(save_directory)

    def _problem_type(self, labels):
        if self.config.problem_type is not None:
            return self.config.problem_type
        if self.num_labels == 1:
            return "regression"
        if labels.dtype in (torch.long, torch.int):
            return "single_label_classification"
        return "multi_label_classification"

    def matryoshka_loss(self, matryoshka_logits, labels):
        """Weighted sum over sizes of each head's loss (cross-entropy, MSE or BCE by problem type)."""
        problem_type = self._problem_type(labels)
        if problem_type == "single_label_classification" and labels.numel():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_labels:
                bad = low if low < 0 else high
                raise ValueError(
                    f"Label {bad} is out of range for num_labels={self.num_labels}; labels must be 0.."
                    f"{self.num_labels - 1} (set num_labels/id2label in the config)."
                )
        total = 0.0
        for weight, logits in zip(self.config.matryoshka_weights, matryoshka_logits):
            if weight == 0:
                continue
            if problem_type == "regression":
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
            elif problem_type == "single_label_classification":
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            total = total + weight * loss
        return total

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        dim=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class ids (or floats for regression).
        dim (`int`, *optional*): whose head gives `logits`; one of `config.matryoshka_dimensions`.

        Returns:
            [`MatryoshkaSequenceClassifierOutput`]: `logits` `(batch_size, num_labels)` at `dim`, and
            `matryoshka_logits`, one such tensor per size.
        """
        dim = self._resolve_dim(dim)
        if dim is not None and dim not in self.config.matryoshka_dimensions:
            raise ValueError(f"dim={dim} has no head; this model has heads for {self.config.matryoshka_dimensions}.")
        outputs = self.matryoshka(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        matryoshka_logits = self.classifier(outputs.full_embeddings)
        index = self.config.matryoshka_dimensions.index(dim) if dim is not None else 0
        loss = self.matryoshka_loss(matryoshka_logits, labels) if labels is not None else None
        result = MatryoshkaSequenceClassifierOutput(
            loss=loss,
            logits=matryoshka_logits[index],
            matryoshka_logits=matryoshka_logits,
            embeddings=outputs.full_embeddings,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return result if return_dict else result.to_tuple()


__all__ = [
    "MatryoshkaLinear",
    "MatryoshkaModel",
    "MatryoshkaModelOutput",
    "MatryoshkaForSequenceClassification",
    "MatryoshkaPreTrainedModel",
    "MatryoshkaSequenceClassifierOutput",
    "pool",
    "truncate_embeddings",
]
