"""Losses for Matryoshka training: `MatryoshkaLoss` wraps a base loss and applies it to every nested prefix.

The encoder runs once per step; the wrapper slices each size's prefix from the same full-size embeddings,
re-normalizes it (one truncation rule: `truncate_embeddings`) and sums the weighted base losses, so the number of
sizes adds only cheap similarity computations, never encoder passes.
"""

import random

import torch
import torch.distributed as dist
from torch import nn

from .modeling_matryoshka import truncate_embeddings


def gather_with_grad(tensor):
    """Concatenate `tensor` from every process along dim 0, keeping gradients (identity outside DDP).

    The backward pass sends each process the gradient of every process's loss with respect to its own rows, so
    in-batch negatives span the global batch and DDP's gradient averaging gives the global-batch gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


class InfoNCELoss(nn.Module):
    """InfoNCE with in-batch negatives (the MultipleNegativesRanking loss).

    Reference: van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018);
    Henderson et al., "Efficient Natural Language Response Suggestion for Smart Reply" (2017).

    Args:
        scale (`float`): inverse temperature applied to cosine similarities (20.0 = temperature 0.05).
        symmetric (`bool`): also score each positive against every anchor (positive -> anchor direction).
        gather_across_devices (`bool`): under DDP, use every process's positives/negatives as candidates.

    Inputs: `forward(anchor, positive, *negatives)`, each `(batch, dim)` and unit length (hard negatives optional).
    Anchor `i`'s positive is candidate `i` of the global batch; all other positives and all negatives are negatives.
    """

    def __init__(self, scale=20.0, symmetric=False, gather_across_devices=True):
        super().__init__()
        self.scale = scale
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices

    def forward(self, anchor, positive, *negatives):
        gather = gather_with_grad if self.gather_across_devices else (lambda t: t)
        offset = 0
        if self.gather_across_devices and dist.is_available() and dist.is_initialized():
            offset = dist.get_rank() * anchor.shape[0]  # equal local batch sizes (Trainer drops nothing else)
        candidates = torch.cat([gather(positive)] + [gather(n) for n in negatives], dim=0)
        labels = torch.arange(anchor.shape[0], device=anchor.device) + offset
        loss = nn.functional.cross_entropy(self.scale * anchor @ candidates.T, labels)
        if self.symmetric:
            anchors = gather(anchor)
            loss = (loss + nn.functional.cross_entropy(self.scale * positive @ anchors.T, labels)) / 2
        return loss


class MatryoshkaLoss(nn.Module):
    """Apply a base loss to every nested prefix of embeddings computed once, weighted per size.

    Reference: Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022.

    Args:
        base_loss (`nn.Module`): called as `base_loss(*prefixes, **kwargs)` on the truncated (and, when
            `normalize`, re-normalized) embeddings of one size; returns a scalar.
        matryoshka_dimensions (`list[int]`): the sizes; take them from the model's config
            (`MatryoshkaLoss.from_config`), the single source of truth.
        matryoshka_weights (`list[float]`, *optional*): one weight per size (default 1.0 each).
        n_dims_per_step (`int`, *optional*): sample this many sizes per step (cheaper steps); the sample is always
            sorted largest first.
        keep_full_dim (`bool`): with `n_dims_per_step`, always include the full size in the sample.
        normalize (`bool`): re-normalize each prefix (cosine-similarity losses want True).

    Example:

    ```python
    >>> loss_fn = MatryoshkaLoss.from_config(model.config, InfoNCELoss(scale=20.0))
    >>> out_a, out_p = model(**anchor_inputs), model(**positive_inputs)
    >>> loss = loss_fn([out_a.full_embeddings, out_p.full_embeddings])
    ```
    """

    def __init__(
        self,
        base_loss,
        matryoshka_dimensions,
        matryoshka_weights=None,
        n_dims_per_step=None,
        keep_full_dim=True,
        normalize=True,
    ):
        super().__init__()
        dims = [int(d) for d in matryoshka_dimensions]
        weights = [1.0] * len(dims) if matryoshka_weights is None else [float(w) for w in matryoshka_weights]
        if len(weights) != len(dims):
            raise ValueError(f"{len(weights)} weights for {len(dims)} sizes {dims}; give one weight per size.")
        if n_dims_per_step is not None and not 1 <= n_dims_per_step <= len(dims):
            raise ValueError(f"n_dims_per_step={n_dims_per_step} must be between 1 and the {len(dims)} sizes.")
        order = sorted(range(len(dims)), key=lambda i: -dims[i])
        self.base_loss = base_loss
        self.matryoshka_dimensions = [dims[i] for i in order]
        self.matryoshka_weights = [weights[i] for i in order]
        self.n_dims_per_step = n_dims_per_step
        self.keep_full_dim = keep_full_dim
        self.normalize = normalize

    @classmethod
    def from_config(cls, config, base_loss, **kwargs):
        """Sizes, weights and normalization from a `MatryoshkaConfig`."""
        kwargs.setdefault("normalize", True)
        return cls(base_loss, config.matryoshka_dimensions, config.matryoshka_weights, **kwargs)

    def sizes_for_step(self):
        """The (size, weight) pairs this step trains, largest first."""
        pairs = list(zip(self.matryoshka_dimensions, self.matryoshka_weights))
        if self.n_dims_per_step is None or self.n_dims_per_step == len(pairs):
            return pairs
        if self.keep_full_dim:
            chosen = [pairs[0]] + random.sample(pairs[1:], self.n_dims_per_step - 1)
        else:
            chosen = random.sample(pairs, self.n_dims_per_step)
        return sorted(chosen, key=lambda p: -p[0])

    def forward(self, embeddings, **kwargs):
        """`embeddings`: a list of full-size tensors (e.g. anchor, positive[, negative]); returns a scalar."""
        total = 0.0
        for dim, weight in self.sizes_for_step():
            if weight == 0:
                continue
            prefixes = [truncate_embeddings(e, dim, self.normalize) for e in embeddings]
            total = total + weight * self.base_loss(*prefixes, **kwargs)
        return total


__all__ = ["InfoNCELoss", "MatryoshkaLoss", "gather_with_grad"]


# --- Image-text dual encoders (ALIGN, CLIP) ---------------------------------------------------------------------


class ImageTextInfoNCELoss(nn.Module):
    """Symmetric image-text InfoNCE with the model's learnable temperature (the CLIP / ALIGN contrastive loss).

    Each image must pick its own caption among every caption of the (global) batch, and each caption its image;
    the two cross-entropies are averaged. Wrap it in `MatryoshkaLoss` to apply it to every nested prefix of both
    towers' embeddings, computed once per step.

    References: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021);
    Jia et al., "Scaling Up Visual and Vision-Language Representation Learning With Noisy Text Supervision" (2021).

    Args:
        gather_across_devices (`bool`): under DDP, score against every process's images and captions (gathered
            with gradients), so negatives span the global batch.

    Inputs: `forward(image_embeds, text_embeds, logit_scale)`: unit-length `(batch, dim)` tensors where row `i` of
    each is a pair, and the scalar inverse temperature (`MatryoshkaDualEncoder.logit_scale`, trained with them).

    Example:

    ```python
    >>> loss_fn = MatryoshkaLoss.from_config(model.config, ImageTextInfoNCELoss())
    >>> out = model(input_ids=..., attention_mask=..., pixel_values=...)
    >>> loss = loss_fn([out.full_image_embeds, out.full_text_embeds], logit_scale=out.logit_scale)
    ```
    """

    def __init__(self, gather_across_devices=True):
        super().__init__()
        self.gather_across_devices = gather_across_devices

    def forward(self, image_embeds, text_embeds, logit_scale):
        distributed = self.gather_across_devices and dist.is_available() and dist.is_initialized()
        gather = gather_with_grad if distributed else (lambda t: t)
        offset = dist.get_rank() * image_embeds.shape[0] if distributed else 0  # equal local batch sizes
        labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + offset
        image_to_text = nn.functional.cross_entropy(logit_scale * image_embeds @ gather(text_embeds).T, labels)
        text_to_image = nn.functional.cross_entropy(logit_scale * text_embeds @ gather(image_embeds).T, labels)
        return (image_to_text + text_to_image) / 2


__all__ += ["ImageTextInfoNCELoss"]
