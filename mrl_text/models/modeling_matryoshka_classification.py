"""Matryoshka task models: nested classification heads (MRL and weight-tied MRL-E) on a Matryoshka encoder.

Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022 (https://arxiv.org/abs/2205.13147).

Like modeling_matryoshka.py, this file imports only torch, transformers and its sibling files (relative imports), so
that ``save_pretrained`` copies it next to the weights and ``trust_remote_code=True`` loads it without mrl-text.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .modeling_matryoshka import MatryoshkaModel, MatryoshkaPreTrainedModel
from .modeling_matryoshka_utils import head_index, weighted_size_sum


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
        scale_inputs (`bool`): the head of size `d` reads its prefix times `sqrt(max(dims) / d)`, so every prefix is
            about as long as the full vector. For MRL-E this is what a per-size learning rate does for MRL heads: one
            tied weight cannot learn at a rate per size, and without it the small heads' logits stay too small to
            train (on Banking77 with frozen features, the 8-d tied head ended about 10 points below a linear probe
            on the same features without it, and level with the probe with it). Set by `config.scale_head_inputs`.

    Shapes: `forward(x)` with `x` of shape `(batch, max(dims))` returns a tuple of `(batch, out_features)` tensors,
    one per size in `dims` order; `forward(x, dim=d)` returns the one tensor of size `d`.
    """

    def __init__(self, dims, out_features, efficient=False, bias=True, scale_inputs=False):
        super().__init__()
        self.dims = [int(d) for d in dims]
        if not self.dims:
            raise ValueError("MatryoshkaLinear needs at least one size in `dims`.")
        self.out_features = out_features
        self.efficient = efficient
        self.scale_inputs = bool(scale_inputs)
        self.in_features = max(self.dims)
        if efficient:
            self.linear = nn.Linear(self.in_features, out_features, bias=bias)
        else:
            self.heads = nn.ModuleList(nn.Linear(d, out_features, bias=bias) for d in self.dims)

    def extra_repr(self):
        return (f"dims={self.dims}, out_features={self.out_features}, efficient={self.efficient}, "
                f"scale_inputs={self.scale_inputs}")

    def _logits_at(self, x, index):
        d = self.dims[index]
        if self.scale_inputs and d != self.in_features:
            x = x[..., :d] * math.sqrt(self.in_features / d)
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


class MatryoshkaForSequenceClassification(MatryoshkaPreTrainedModel):
    r"""
    A [`MatryoshkaModel`] with nested classification heads ([`MatryoshkaLinear`], MRL or MRL-E by
    `config.efficient_heads`) on the full pooled embedding (not normalized): logits for every size in
    `config.matryoshka_dimensions`, trained with the weighted sum of per-size losses (the paper's Matryoshka
    cross-entropy). Inference uses the head of `dim`, else `config.truncate_dim`, else full size. With
    `config.scale_head_inputs = True` (recommended for MRL-E) each head reads its prefix times `sqrt(full / d)`.
    """

    def __init__(self, config, encoder=None):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.matryoshka = MatryoshkaModel(config, encoder=encoder)
        self.classifier = MatryoshkaLinear(
            config.matryoshka_dimensions, config.num_labels, efficient=config.efficient_heads,
            scale_inputs=config.scale_head_inputs,
        )
        # Training only: the factor on every smaller size's loss weight, set per step by a size schedule
        self.smaller_sizes_scale = 1.0
        self.post_init()

    @property
    def tokenizer(self):
        return self.matryoshka.tokenizer

    @tokenizer.setter
    def tokenizer(self, value):
        self.matryoshka.tokenizer = value

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
                    f"{self.num_labels - 1} (set num_labels/id2label in the config; class ids with gaps: renumber "
                    "them 0..n-1, e.g. dataset.class_encode_column)."
                )

        def loss_at(index):
            logits = matryoshka_logits[index]
            if problem_type == "regression":
                return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
            if problem_type == "single_label_classification":
                return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

        return weighted_size_sum(loss_at, self.config.matryoshka_weights, self.smaller_sizes_scale)

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
        layers=None,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class ids (or floats for regression).
        dim (`int`, *optional*): whose head gives `logits`; one of `config.matryoshka_dimensions`.
        layers (`int`, *optional*): run only the encoder's first `layers` layers (2D Matryoshka; one of
            `config.matryoshka_layers`) and classify the pooled output of that depth with the same heads; None: full
            depth. Checked as in [`MatryoshkaModel.forward`].

        Returns:
            [`MatryoshkaSequenceClassifierOutput`]: `logits` `(batch_size, num_labels)` at `dim`, and
            `matryoshka_logits`, one such tensor per size.
        """
        index = head_index(self.config, dim)
        outputs = self.matryoshka(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            layers=layers,
            **kwargs,
        )
        matryoshka_logits = self.classifier(outputs.full_embeddings)
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


__all__ = ["MatryoshkaForSequenceClassification", "MatryoshkaLinear", "MatryoshkaSequenceClassifierOutput"]
