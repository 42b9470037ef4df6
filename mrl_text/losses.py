"""Losses for Matryoshka training: `MatryoshkaLoss` wraps a base loss and applies it to every nested prefix.

The encoder runs once per step; the wrapper slices each size's prefix from the same full-size embeddings,
re-normalizes it (one truncation rule: `truncate_embeddings`) and sums the weighted base losses, so the number of
sizes adds only cheap similarity computations, never encoder passes.
"""

import inspect
import random

import torch
import torch.distributed as dist
from torch import nn

from .modeling_matryoshka import truncate_embeddings


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's rows (equal row counts)."""

    @staticmethod
    def forward(ctx, tensor):
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # all_reduce rather than reduce_scatter: gloo (CPU) has no reduce_scatter
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor):
    """Concatenate `tensor` from every process along dim 0, keeping gradients (identity outside DDP).

    The backward pass sends each process the gradient of every process's loss with respect to its own rows, so
    in-batch negatives span the global batch and DDP's gradient averaging gives the global-batch gradient.
    Every process must pass the same number of rows (accelerate's `even_batches`, the default, ensures it).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


class InfoNCELoss(nn.Module):
    """InfoNCE with in-batch negatives and optional hard negatives (the MultipleNegativesRanking loss).

    Each anchor must pick its own positive out of every positive and hard negative in the (global) batch: a
    cross-entropy over `scale * cos(anchor, candidate)`.

    References: van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018);
    Henderson et al., "Efficient Natural Language Response Suggestion for Smart Reply" (2017).

    Args:
        scale (`float`): inverse temperature applied to cosine similarities (20.0 = temperature 0.05).
        symmetric (`bool`): add the positive -> anchor direction (each positive picks its anchor among all
            anchors) and average the two terms.
        gather_across_devices (`bool`): under DDP, use every process's positives/negatives as candidates
            (gathered with gradients), so in-batch negatives span the global batch.
        temperature (`float`, *optional*): the same knob as `scale`, written as `1 / scale`; overrides `scale`.

    Inputs: `forward(anchor, positive, *negatives)`, each `(batch, dim)` and unit length. Anchor `i`'s positive is
    candidate `i` of the global batch; all other positives and all hard negatives are its negatives.

    Example:

    ```python
    >>> loss_fn = MatryoshkaLoss.from_config(model.config, InfoNCELoss(scale=20.0))
    >>> loss = loss_fn([anchor_full, positive_full, negative_full])
    ```
    """

    # What the trainer's data must hold: text columns (anchor, positive, hard negatives...) and no label column.
    min_text_columns, max_text_columns, needs_labels = 2, None, False

    def __init__(self, scale=20.0, symmetric=False, gather_across_devices=True, temperature=None):
        super().__init__()
        if temperature is not None:
            if not temperature > 0:
                raise ValueError(f"temperature={temperature!r} must be > 0 (0.05 is usual).")
            scale = 1.0 / temperature
        if not scale > 0:
            raise ValueError(f"scale={scale!r} must be > 0 (20.0 is usual, i.e. temperature 0.05).")
        self.scale = float(scale)
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

    def extra_repr(self):
        return f"scale={self.scale}, symmetric={self.symmetric}, gather_across_devices={self.gather_across_devices}"


class CoSENTLoss(nn.Module):
    """CoSENT: a ranking loss for scored pairs; every pair scored higher must have the higher cosine similarity.

    loss = log(1 + sum over pairs (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i))).
    Only the order of the scores matters, so STS-style 0-5 scores need no rescaling.

    Reference: Su Jianlin, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT" (2022),
    https://kexue.fm/archives/8847.

    Args:
        scale (`float`): inverse temperature applied to the cosine differences (20.0 as in the reference).

    Inputs: `forward(embeddings1, embeddings2, labels)`: two `(batch, dim)` tensors and the pairs' scores `(batch,)`.
    """

    min_text_columns, max_text_columns, needs_labels = 2, 2, True

    def __init__(self, scale=20.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale={scale!r} must be > 0 (20.0 is usual).")
        self.scale = float(scale)

    def forward(self, embeddings1, embeddings2, labels):
        if labels is None:
            raise ValueError("CoSENTLoss needs the pairs' scores: pass `labels` (a 'score' or 'label' column).")
        cosines = nn.functional.cosine_similarity(embeddings1, embeddings2, dim=-1) * self.scale
        differences = cosines[None, :] - cosines[:, None]  # [i, j] = cos_j - cos_i
        ranked = labels[:, None] > labels[None, :]  # pair i should score above pair j
        differences = differences[ranked.to(differences.device)]
        # The leading zero is the "1 +" inside the log.
        return torch.logsumexp(torch.cat([differences.new_zeros(1), differences]), dim=0)

    def extra_repr(self):
        return f"scale={self.scale}"


class MatryoshkaCrossEntropyLoss(nn.Module):
    """The paper's Matryoshka cross-entropy: the weighted sum over sizes of each nested head's classification loss.

    The nested heads (one per size, MRL; or weight-tied, MRL-E, by `config.efficient_heads`) live in
    `MatryoshkaForSequenceClassification`, which already owns the math (`matryoshka_loss`: cross-entropy, MSE for
    regression, BCE for multi-label; weights from `config.matryoshka_weights`; labels checked against
    `num_labels`). This loss is the trainer-facing name for it, so there is one copy of the math.

    Reference: Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022, Eq. 1 (MRL) and Sec. 3 (MRL-E).

    Inputs: `forward(model, matryoshka_logits, labels)`: the classification model (or a wrapper around it),
    its `matryoshka_logits` (one `(batch, num_labels)` tensor per size) and the labels `(batch,)`.
    """

    min_text_columns, max_text_columns, needs_labels = 1, 1, True

    def forward(self, model, matryoshka_logits, labels):
        classifier = getattr(model, "module", model)  # DDP / DataParallel wrappers keep the model in .module
        if not hasattr(classifier, "matryoshka_loss"):
            raise ValueError(
                f"loss='cross_entropy' trains nested classification heads; {type(classifier).__name__} has none. "
                "Use mrl_text.MatryoshkaForSequenceClassification (config with num_labels)."
            )
        return classifier.matryoshka_loss(matryoshka_logits, labels)


class DistillMSELoss(nn.Module):
    """Distillation: mean squared error between the student's embeddings and a teacher's embeddings.

    Wrapped in `MatryoshkaLoss`, the teacher's embeddings are truncated (and re-normalized) to every size by the same
    `truncate_embeddings` call as the student's, so each student prefix learns the matching teacher prefix.

    Reference: Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
    Distillation", EMNLP 2020.

    Inputs: `forward(student, teacher)`, both `(batch, dim)`; no gradient flows into the teacher.
    """

    min_text_columns, max_text_columns, needs_labels = 1, 1, False

    def forward(self, student, teacher):
        if student.shape != teacher.shape:
            raise ValueError(
                f"Student embeddings {tuple(student.shape)} and teacher embeddings {tuple(teacher.shape)} differ in "
                "shape; the teacher's embedding size must be at least the student's."
            )
        return nn.functional.mse_loss(student, teacher.detach())


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



LOSSES = {
    "infonce": InfoNCELoss,
    "cosent": CoSENTLoss,
    "cross_entropy": MatryoshkaCrossEntropyLoss,
    "distill_mse": DistillMSELoss,
}


def get_loss(name, **options):
    """Build the base loss registered as `name` ("infonce", "cosent", "cross_entropy", "distill_mse") with `options`.

    Wrap the result in `MatryoshkaLoss.from_config(model.config, base)` for the embedding losses; the trainer does.
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}.")
    loss_class = LOSSES[name]
    accepted = [p for p in inspect.signature(loss_class.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"Loss {name!r} takes no option(s) {unknown}; it accepts {accepted or 'none'}.")
    return loss_class(**options)


__all__ = [
    "CoSENTLoss",
    "DistillMSELoss",
    "InfoNCELoss",
    "LOSSES",
    "MatryoshkaCrossEntropyLoss",
    "MatryoshkaLoss",
    "gather_with_grad",
    "get_loss",
]
