"""`MatryoshkaLoss`: a loss applied to every nested prefix of embeddings computed once per step.

It is called like the loss it wraps, `loss(embeddings: list[Tensor], labels)` (see base.py), and cuts each size's
prefix of the same full-size embeddings, re-normalized (one truncation rule: `truncate_embeddings`), so the number of
sizes adds only cheap similarity computations, never encoder passes.
"""

import random

import torch
from torch import nn

from ..models.modeling_matryoshka_utils import truncate_embeddings, weighted_size_sum
from .base import MATRYOSHKA_CITATION
from .cached import GRADCACHE_CITATION


class MatryoshkaLoss(nn.Module):
    """Apply a base loss to every nested prefix of embeddings computed once, weighted per size.

    Called like its base loss, `loss(embeddings, labels)`: each size's prefix of every tensor (and of the labels when
    they are embeddings) is cut, re-normalized with `normalize` and handed to the base loss; the weighted losses sum.
    Reference: Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022 (`citation`).

    Args:
        base_loss (`nn.Module`): a loss with the same call, `base_loss(prefixes, labels)`, returning a scalar.
        matryoshka_dimensions (`list[int]`): the sizes; take them from the model's config
            (`MatryoshkaLoss.from_config`), the single source of truth.
        matryoshka_weights (`list[float]`, *optional*): one weight per size (default 1.0 each).
        n_dims_per_step (`int`, *optional*): sample this many sizes per step (cheaper steps); the sample is always
            sorted largest first.
        keep_full_dim (`bool`): with `n_dims_per_step`, always include the full size in the sample.
        normalize (`bool`): re-normalize each prefix (cosine-similarity losses want True).
        prefix_targets (`str`): `"labels"` (the paper): every size learns the task's targets; `"full_size"`: the
            largest size learns them and every smaller prefix matches the largest size's detached score
            distribution (KL divergence over the base loss's `logits`, e.g. `InfoNCELoss`'s in-batch scores).
        mini_batch_size (`int`, *optional*): train large batches in the memory of this many rows (GradCache,
            `mrl_text.losses.cached`): `MatryoshkaTrainer` embeds the batch in mini-batches without graphs, computes
            this loss at every size on the whole batch, then re-embeds each mini-batch with its graph (same dropout)
            to back-propagate the cached embedding gradients. Same gradients as the full batch, one extra forward
            pass; the sizes still share one pass per mini-batch. The option lives here, on the loss that sums the
            sizes, rather than on a `Cached...` twin of each base loss: the cache must enclose the whole sum over
            sizes (else each size would re-run the encoder), and any base loss that reads only the batch's
            embeddings (InfoNCE with DDP gathering, CoSENT, distillation) is then cached without a change. Called by
            hand on embeddings, the loss ignores it.

    `smaller_sizes_scale` (1.0 unless a `SizeSchedule` drives this loss) multiplies every smaller size's weight; at 0
    only the full size is computed. The weighted sum is `weighted_size_sum`, the rule the classification and MLM
    heads use too.

    Example:

    ```python
    >>> loss = MatryoshkaLoss.from_config(model.config, InfoNCELoss(scale=20.0), n_dims_per_step=3)
    >>> MatryoshkaTrainer(model=model, args=args, train_dataset=pairs, loss=loss).train()
    >>> out_a, out_p = model(**anchor_inputs), model(**positive_inputs)  # or by hand: one pass per text column
    >>> value = loss([out_a.full_embeddings, out_p.full_embeddings])
    >>> loss.get_config_dict()["matryoshka_dimensions"], loss.citation  # what a model card reports
    ```
    """

    @property
    def citation(self):
        """BibTeX of what trains the model: the paper, and GradCache's when training in mini-batches."""
        return MATRYOSHKA_CITATION + (f"\n\n{GRADCACHE_CITATION}" if self.mini_batch_size else "")

    def __init__(self, base_loss, matryoshka_dimensions, matryoshka_weights=None, n_dims_per_step=None,
                 keep_full_dim=True, normalize=True, prefix_targets="labels", mini_batch_size=None):
        super().__init__()
        if prefix_targets not in ("labels", "full_size"):
            raise ValueError(f"prefix_targets={prefix_targets!r}; choose 'labels' or 'full_size'.")
        if prefix_targets == "full_size" and not hasattr(base_loss, "logits"):
            raise ValueError(f"prefix_targets='full_size' distils scores; {type(base_loss).__name__} has no `logits`.")
        if getattr(base_loss, "sums_over_sizes", False):
            raise ValueError(f"{type(base_loss).__name__} already weights every size (nested heads); use it alone.")
        dims = [int(d) for d in matryoshka_dimensions]
        weights = [1.0] * len(dims) if matryoshka_weights is None else [float(w) for w in matryoshka_weights]
        if len(weights) != len(dims):
            raise ValueError(f"{len(weights)} weights for {len(dims)} sizes {dims}; give one weight per size.")
        if n_dims_per_step is not None and not 1 <= n_dims_per_step <= len(dims):
            raise ValueError(f"n_dims_per_step={n_dims_per_step} must be between 1 and the {len(dims)} sizes.")
        if mini_batch_size is not None and not (isinstance(mini_batch_size, int) and mini_batch_size > 0):
            raise ValueError(f"mini_batch_size={mini_batch_size!r} must be a positive row count (e.g. 32) or None.")
        order = sorted(range(len(dims)), key=lambda i: -dims[i])
        self.base_loss = base_loss
        self.matryoshka_dimensions = [dims[i] for i in order]
        self.matryoshka_weights = [weights[i] for i in order]
        self.n_dims_per_step = n_dims_per_step
        self.keep_full_dim = keep_full_dim
        self.normalize = normalize
        self.prefix_targets = prefix_targets
        self.mini_batch_size = mini_batch_size
        self.smaller_sizes_scale = 1.0

    @classmethod
    def from_config(cls, config, base_loss, **kwargs):
        """Sizes, weights and normalization from a `MatryoshkaConfig`."""
        kwargs.setdefault("normalize", True)
        return cls(base_loss, config.matryoshka_dimensions, config.matryoshka_weights, **kwargs)

    # The dataset layout and the batch-computed targets are the base loss's.
    min_text_columns = property(lambda self: getattr(self.base_loss, "min_text_columns", 1))
    max_text_columns = property(lambda self: getattr(self.base_loss, "max_text_columns", None))
    needs_labels = property(lambda self: getattr(self.base_loss, "needs_labels", None))
    teacher_tokenizer = property(lambda self: getattr(self.base_loss, "teacher_tokenizer", None))

    def compute_labels(self, columns, labels):
        """The base loss's targets computed from the batch (see `DistillMSELoss`); `labels` unchanged otherwise."""
        compute = getattr(self.base_loss, "compute_labels", None)
        return labels if compute is None else compute(columns, labels)

    def indices_for_step(self):
        """Which sizes (indices, largest first) this step trains: the full size alone while the smaller sizes weigh
        0, else every size or, with `n_dims_per_step`, a fresh sample."""
        count = len(self.matryoshka_dimensions)
        if self.smaller_sizes_scale == 0:
            return [0]
        if self.n_dims_per_step is None or self.n_dims_per_step == count:
            return list(range(count))
        if self.keep_full_dim:
            return [0] + sorted(random.sample(range(1, count), self.n_dims_per_step - 1))
        return sorted(random.sample(range(count), self.n_dims_per_step))

    def sizes_for_step(self):
        """The (size, weight) pairs a step trains, largest first, weights scaled by `smaller_sizes_scale` (draws a
        fresh sample with `n_dims_per_step`)."""
        scale = [1.0] + [self.smaller_sizes_scale] * (len(self.matryoshka_dimensions) - 1)
        dims, weights = self.matryoshka_dimensions, self.matryoshka_weights
        return [(dims[i], weights[i] * scale[i]) for i in self.indices_for_step()]

    def forward(self, embeddings, labels=None):
        """`embeddings`: a list of full-size tensors (e.g. anchor, positive[, negative]); returns a scalar."""
        if isinstance(embeddings, torch.Tensor):
            embeddings = [embeddings]
        embedding_labels = labels is not None and getattr(self.base_loss, "embedding_labels", False)
        full = self.matryoshka_dimensions[0]
        if self.prefix_targets == "full_size":
            with torch.no_grad():
                teacher = self.base_loss.logits([truncate_embeddings(e, full, self.normalize) for e in embeddings])[0]
            teacher = teacher.log_softmax(-1)

        def loss_at(index):
            dim = self.matryoshka_dimensions[index]
            prefixes = [truncate_embeddings(e, dim, self.normalize) for e in embeddings]
            if self.prefix_targets == "full_size" and dim != full:  # KL(full size's distribution || the prefix's)
                student = self.base_loss.logits(prefixes)[0].log_softmax(-1)
                return nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True)
            sized_labels = truncate_embeddings(labels, dim, self.normalize) if embedding_labels else labels
            return self.base_loss(prefixes, sized_labels)

        return weighted_size_sum(loss_at, self.matryoshka_weights, self.smaller_sizes_scale, self.indices_for_step())

    def get_config_dict(self):
        """What trained the model, for its card: the base loss and its options, the sizes and weights, sampling."""
        base_config = getattr(self.base_loss, "get_config_dict", dict)
        return {
            "loss": type(self.base_loss).__name__,
            "loss_config": base_config(),
            "matryoshka_dimensions": list(self.matryoshka_dimensions),
            "matryoshka_weights": list(self.matryoshka_weights),
            "n_dims_per_step": self.n_dims_per_step,
            "keep_full_dim": self.keep_full_dim,
            "normalize": self.normalize,
            "prefix_targets": self.prefix_targets,
            **({"mini_batch_size": self.mini_batch_size} if self.mini_batch_size else {}),
        }


__all__ = ["MatryoshkaLoss"]
