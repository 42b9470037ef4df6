"""Matryoshka image-text dual encoders: ALIGN, CLIP or VisionTextDualEncoder with nested embeddings on both towers.

Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022 (https://arxiv.org/abs/2205.13147), trained
ALIGN with MRL: the image and the text embedding are nested alike, each prefix is normalized on its own, and the
contrastive loss is summed over sizes.

This file imports only torch, transformers and its sibling files of `mrl_text/models/` (relative imports), so
``save_pretrained`` copies it with them next to the weights and ``trust_remote_code=True`` loads a saved model on a
machine without mrl-text.
"""

import inspect
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import AutoModel
from transformers.utils import ModelOutput

from .configuration_matryoshka_dual_encoder import MatryoshkaDualEncoderConfig
from .modeling_matryoshka import (
    MatryoshkaPreTrainedModel,
    config_to_wrap,
    hub_kwargs,
    resolve_tokenizer,
    truncate_embeddings,
)

# CLIP clamps its learned logit scale at 100 during training; the same cap keeps ALIGN's 1/temperature sane.
MAX_LOGIT_SCALE = 100.0


@dataclass
class MatryoshkaDualEncoderOutput(ModelOutput):
    """
    Output of [`MatryoshkaDualEncoder`].

    Args:
        logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
            `logit_scale` times the cosine similarity of `image_embeds` and `text_embeds` (at `dim`).
        logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`): the transpose.
        text_embeds (`torch.FloatTensor` of shape `(text_batch_size, dim)`): unit-length text embeddings at `dim`.
        image_embeds (`torch.FloatTensor` of shape `(image_batch_size, dim)`): unit-length image embeddings at `dim`.
        full_text_embeds (`torch.FloatTensor` of shape `(text_batch_size, embedding_size)`):
            Full-size text embeddings, *not* normalized: the loss slices every prefix from this one tensor.
        full_image_embeds (`torch.FloatTensor` of shape `(image_batch_size, embedding_size)`): the same for images.
        logit_scale (`torch.FloatTensor` of shape `()`): the learnable inverse temperature (CLIP's
            `logit_scale.exp()`, ALIGN's `1 / temperature`), capped at 100.
    """

    logits_per_image: Optional[torch.FloatTensor] = None
    logits_per_text: Optional[torch.FloatTensor] = None
    text_embeds: Optional[torch.FloatTensor] = None
    image_embeds: Optional[torch.FloatTensor] = None
    full_text_embeds: Optional[torch.FloatTensor] = None
    full_image_embeds: Optional[torch.FloatTensor] = None
    logit_scale: Optional[torch.FloatTensor] = None


class MatryoshkaDualEncoderPreTrainedModel(MatryoshkaPreTrainedModel):
    """Shares the text models' `dim` checks, tokenizer, save hooks (model card) and `push_to_hub`; only the config
    differs."""

    config_class = MatryoshkaDualEncoderConfig
    config: MatryoshkaDualEncoderConfig
    base_model_prefix = "matryoshka_dual_encoder"
    main_input_name = "input_ids"



class MatryoshkaDualEncoder(MatryoshkaDualEncoderPreTrainedModel):
    r"""
    An image-text dual encoder whose image and text embeddings are Matryoshka embeddings: their first `d`
    coordinates, re-normalized, are embeddings in one shared space for every `d` in `config.matryoshka_dimensions`.

    Wraps transformers' `AlignModel`, `CLIPModel` or `VisionTextDualEncoderModel` (anything `AutoModel` builds from
    the nested config that has `get_text_features` and `get_image_features`). Build it around a pretrained model with
    [`MatryoshkaDualEncoder.from_pretrained_dual`], or load a saved one with `from_pretrained` /
    `AutoModel.from_pretrained` (after `import mrl_text`, or with `trust_remote_code=True`).

    Example:

    ```python
    >>> import mrl_text
    >>> model = mrl_text.MatryoshkaDualEncoder.from_pretrained_dual(
    ...     "kakaobrain/align-base", matryoshka_dimensions=[640, 512, 256, 128, 64, 32, 16])
    >>> text = model.tokenizer(["a photo of a cat"], return_tensors="pt")
    >>> model.get_text_features(**text, dim=64).shape
    torch.Size([1, 64])
    ```
    """

    def __init__(self, config, encoder=None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config.encoder)
        for method in ("get_text_features", "get_image_features"):
            if not callable(getattr(self.encoder, method, None)):
                raise ValueError(
                    f"{type(self.encoder).__name__} has no `{method}`; wrap an image-text dual encoder such as "
                    "AlignModel, CLIPModel or VisionTextDualEncoderModel."
                )
        # One config object for the wrapper and the wrapped model, so edits to either are saved.
        self.config.encoder = self.encoder.config
        if config.encoder.model_type == "align" and getattr(self.encoder.text_model, "pooler", None) is not None:
            # ALIGN's text features take the first token's state, never the pooler: an unused layer costs time and
            # makes DDP fail ("parameters that were not used in producing loss").
            self.encoder.text_model.pooler = None
        self._text_kwargs = self._named_parameters_of(self.encoder.get_text_features)
        self._tokenizer = None
        self.post_init()

    @staticmethod
    def _named_parameters_of(method):
        return {
            name
            for name, p in inspect.signature(method).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }

    @classmethod
    def from_pretrained_dual(
        cls,
        name_or_path,
        matryoshka_dimensions=None,
        matryoshka_weights=None,
        truncate_dim=None,
        tokenizer=True,
        **from_pretrained_kwargs,
    ):
        """Wrap a pretrained dual encoder (hub id or local folder, e.g. "kakaobrain/align-base") in a new model.

        Its weights are loaded, and its tokenizer when `tokenizer` is True (or pass a tokenizer object / name).
        Keyword arguments such as `revision`, `cache_dir` or `dtype` go to the wrapped model's `from_pretrained`.
        See [`MatryoshkaDualEncoderConfig`] for the rest.
        """
        config_kwargs = hub_kwargs(from_pretrained_kwargs)
        encoder_config = config_to_wrap(name_or_path, config_kwargs)
        config = MatryoshkaDualEncoderConfig(
            encoder=encoder_config,
            matryoshka_dimensions=matryoshka_dimensions,
            matryoshka_weights=matryoshka_weights,
            truncate_dim=truncate_dim,
        )
        encoder = AutoModel.from_pretrained(name_or_path, config=encoder_config, **from_pretrained_kwargs)
        model = cls(config, encoder=encoder)
        model.tokenizer = resolve_tokenizer(tokenizer, name_or_path, config_kwargs)
        return model

    @property
    def logit_scale(self):
        """The learnable inverse temperature as a multiplier of cosine similarities (a scalar tensor with grad)."""
        if hasattr(self.encoder, "logit_scale"):  # CLIP, VisionTextDualEncoder: stored as a log
            scale = self.encoder.logit_scale.exp()
        elif hasattr(self.encoder, "temperature"):  # ALIGN: logits are similarities / temperature
            scale = 1.0 / self.encoder.temperature
        else:
            raise ValueError(
                f"{type(self.encoder).__name__} has neither `logit_scale` nor `temperature`; cannot tell its "
                "learnable temperature."
            )
        return scale.clamp(max=MAX_LOGIT_SCALE)

    @staticmethod
    def _pooled(outputs):
        # get_*_features return an output object whose pooler_output holds the (projected) embedding.
        return outputs.pooler_output

    def _check_size(self, embeddings, tower):
        if embeddings.shape[-1] != self.config.embedding_size:
            raise ValueError(
                f"The {tower} tower gave embeddings of size {embeddings.shape[-1]}, but the config says "
                f"{self.config.embedding_size}; the nested config does not describe the wrapped model."
            )
        return embeddings

    def full_text_features(self, **text_inputs):
        """Full-size text embeddings `(batch, embedding_size)`, not normalized (what the loss slices)."""
        # Tokenizer extras the wrapped model does not take (e.g. token_type_ids for CLIP) are dropped, not fatal.
        known = {k: v for k, v in text_inputs.items() if k in self._text_kwargs and v is not None}
        if "input_ids" not in known and "inputs_embeds" not in known:
            raise ValueError(
                f"Text features need `input_ids` (from the tokenizer); got {sorted(text_inputs)}. "
                f"{type(self.encoder).__name__} accepts {sorted(self._text_kwargs)}."
            )
        return self._check_size(self._pooled(self.encoder.get_text_features(**known)), "text")

    def full_image_features(self, pixel_values):
        """Full-size image embeddings `(batch, embedding_size)`, not normalized (what the loss slices)."""
        if pixel_values is None:
            raise ValueError("Image features need `pixel_values` of shape (batch, channels, height, width).")
        return self._check_size(self._pooled(self.encoder.get_image_features(pixel_values=pixel_values)), "image")

    def get_text_features(self, input_ids=None, attention_mask=None, dim=None, **text_inputs):
        """Unit-length text embeddings `(batch, dim)` (default: `truncate_dim`, else full size).

        Takes the tokenizer's outputs (`input_ids`, `attention_mask`, `token_type_ids`, ...). The prefix of size
        `dim` is normalized on its own, after truncation.
        """
        dim = self._resolve_dim(dim)
        full = self.full_text_features(input_ids=input_ids, attention_mask=attention_mask, **text_inputs)
        return truncate_embeddings(full, dim, normalize=True)

    def get_image_features(self, pixel_values=None, dim=None):
        """Unit-length image embeddings `(batch, dim)` from `pixel_values` `(batch, channels, height, width)`."""
        dim = self._resolve_dim(dim)
        return truncate_embeddings(self.full_image_features(pixel_values), dim, normalize=True)

    @torch.inference_mode()
    def encode_texts(self, texts, dim=None, batch_size=32, max_length=None, device=None):
        """Unit-length text embeddings `(len(texts), dim)` on the CPU, tokenized with `self.tokenizer` in batches."""
        if self.tokenizer is None:
            raise ValueError(
                "This model has no tokenizer: build it with MatryoshkaDualEncoder.from_pretrained_dual(...), load it "
                "from a folder that holds one, or set `model.tokenizer = AutoTokenizer.from_pretrained(...)`."
            )
        texts = [texts] if isinstance(texts, str) else list(texts)
        dim = self._resolve_dim(dim)
        device = device or self.device
        chunks = []
        for start in range(0, len(texts), batch_size):
            inputs = self.tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                return_tensors="pt",
            ).to(device)
            chunks.append(self.get_text_features(**inputs, dim=dim).float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, dim or self.config.embedding_size)

    @torch.inference_mode()
    def encode_images(self, pixel_values, dim=None, batch_size=32, device=None):
        """Unit-length image embeddings `(n, dim)` on the CPU from preprocessed `pixel_values` `(n, C, H, W)`."""
        dim = self._resolve_dim(dim)
        device = device or self.device
        pixel_values = torch.as_tensor(pixel_values)
        chunks = [
            self.get_image_features(
                pixel_values=pixel_values[start : start + batch_size].to(device, self.dtype), dim=dim
            )
            .float()
            .cpu()
            for start in range(0, len(pixel_values), batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.empty(0, dim or self.config.embedding_size)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, dim=None, return_dict=None, **kwargs):
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(text_batch_size, sequence_length)`): token ids.
            pixel_values (`torch.FloatTensor` of shape `(image_batch_size, channels, height, width)`): images.
            attention_mask (`torch.LongTensor` of shape `(text_batch_size, sequence_length)`): 1 for real tokens.
            dim (`int`, *optional*): size of `text_embeds`, `image_embeds` and the logits; defaults to the config's
                `truncate_dim` (full if None).
            kwargs: other text inputs (`token_type_ids`, `position_ids`) passed on when the wrapped model takes them.

        Returns:
            [`MatryoshkaDualEncoderOutput`] with the embeddings at `dim`, both full-size embeddings and the logit
            scale. Train with `MatryoshkaLoss(ImageTextInfoNCELoss(), ...)` over the full embeddings.
        """
        dim = self._resolve_dim(dim)
        full_text = self.full_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        full_image = self.full_image_features(pixel_values)
        text_embeds = truncate_embeddings(full_text, dim, normalize=True)
        image_embeds = truncate_embeddings(full_image, dim, normalize=True)
        logit_scale = self.logit_scale
        logits_per_text = logit_scale * text_embeds @ image_embeds.T
        result = MatryoshkaDualEncoderOutput(
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            full_text_embeds=full_text,
            full_image_embeds=full_image,
            logit_scale=logit_scale,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return result if return_dict else result.to_tuple()


__all__ = ["MatryoshkaDualEncoder", "MatryoshkaDualEncoderOutput", "MatryoshkaDualEncoderPreTrainedModel"]
