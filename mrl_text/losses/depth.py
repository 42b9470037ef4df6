"""2D Matryoshka training: the Matryoshka loss at full depth and at earlier depths, from the same encoder pass.

`MatryoshkaDepthLoss` wraps any loss with the project's call (`loss(embeddings: list[Tensor], labels)`, usually a
`MatryoshkaLoss`, so every size is trained at every depth) and adds, each step, the same loss on the embeddings
pooled after the earlier layers (every one by default, or a sample), plus an alignment of each to the final layer's.
The final layer's embedding is the alignment's *target*: it is detached, so the alignment moves only the earlier
layers' output towards the final one and never drags the final embedding towards a shallower one
(sentence-transformers' `AdaptiveLayerLoss` / `Matryoshka2dLoss` did not detach it before their issues #3757 and
#3880 were fixed).

The encoder still runs once per step: the trainer asks the loss which depths it trains this step (`layers_for_step`),
asks the model for those depths' embeddings from the same pass (`output_layer_embeddings=`, pooled from its hidden
states), and calls the loss with one flat list: the final layer's tensor of every text column, then every column's
tensor at each of this step's depths, in the order `layers_for_step` returned.
"""

import random

import torch
from torch import nn

from .quantization_aware import find_quantization_aware

DEPTH_CITATION = """@article{li2024twod,
  title   = {2D Matryoshka Sentence Embeddings},
  author  = {Li, Xianming and Li, Zongxi and Li, Jing and Xie, Haoran and Li, Qing},
  journal = {arXiv preprint arXiv:2402.14776},
  year    = {2024}
}"""


def alignment_loss(embeddings, targets):
    """Mean cosine distance from each embedding to its (detached) target, `1 - cos`, in [0, 2]."""
    targets = targets.detach()
    return (1 - nn.functional.cosine_similarity(embeddings, targets, dim=-1)).mean()


def similarity_kl_loss(embeddings, targets, temperature=0.05):
    """KL divergence from the (detached) targets' in-batch similarity distribution to the embeddings' one.

    Each row's cosine similarities to the other rows (itself left out), divided by `temperature`, give a softmax
    over the batch; the loss is the mean over rows of KL(target row || embedding row). Unlike `alignment_loss` it
    asks an earlier layer to rank the batch as the final layer does, not to reproduce its coordinates."""
    n = embeddings.shape[0]
    if n < 3:
        return embeddings.sum() * 0.0  # one other row: the distribution is a constant
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=embeddings.device)

    def log_distribution(x):
        x = nn.functional.normalize(x, dim=-1)
        return nn.functional.log_softmax((x @ x.T)[off_diagonal].view(n, n - 1) / temperature, dim=-1)

    return nn.functional.kl_div(log_distribution(embeddings), log_distribution(targets.detach()), log_target=True,
                                reduction="batchmean")


ALIGNMENTS = ("cosine", "similarity_kl")


class MatryoshkaDepthLoss(nn.Module):
    """Apply a loss at full depth and at earlier depths (all, or a sample per step), aligned to the final layer.

    Loss of a step = `w_full * loss(final)` + the mean over the sampled earlier depths `k` of
    `w_k * (loss(layer_k) + alignment_weight * align(layer_k, final.detach()))` (a mean, so `n_layers_per_step`
    trades variance for compute without changing how much the earlier depths weigh), where `align` is the mean cosine
    distance `1 - cos` per text (`alignment="cosine"`) or, with `alignment="similarity_kl"`, the KL divergence
    between the in-batch similarity distributions (all text columns together, `alignment_temperature`).

    Reference: Li et al., "2D Matryoshka Sentence Embeddings" (2024).

    Args:
        loss (`nn.Module`): the loss applied at every depth, called as `loss(embeddings, labels)` (a `MatryoshkaLoss`
            trains every size at every depth).
        matryoshka_layers (`list[int]`): the depths (layer counts) trained; the largest is the full depth (the
            final layer). Take them from the model's config: `MatryoshkaDepthLoss.from_config`.
        layer_weights (`list[float]`, *optional*): one weight per depth, in the order of `matryoshka_layers` (the
            full depth's weights the final layer's loss); default 1.0 each.
        n_layers_per_step (`int`): earlier depths sampled (uniformly, without replacement) per step; `-1` (the
            default): every earlier depth each step. They come from the same encoder pass, so training all of them
            costs only their losses and gives every step a lower-variance signal than a sample (on STS-B validation
            it beat one sampled depth per step at every shallow depth and size).
        alignment_weight (`float`): weight of the alignment of each sampled depth to the final layer (0 turns it
            off).
        alignment (`str`): `"similarity_kl"` (the default: the batch's similarity distribution towards the final
            layer's, which asks an earlier layer to rank texts as the final one does rather than to copy its
            coordinates, and beat `"cosine"` at every shallow depth on STS-B validation) or `"cosine"` (each text's
            embedding towards its final one).
        alignment_temperature (`float`): temperature of the similarity distributions (`"similarity_kl"`).

    Example:

    ```python
    >>> config = model.config  # MatryoshkaConfig(..., matryoshka_layers=[6, 4, 3, 2])
    >>> loss = MatryoshkaDepthLoss.from_config(config, MatryoshkaLoss.from_config(config, InfoNCELoss()))
    >>> MatryoshkaTrainer(model=model, args=args, train_dataset=pairs, loss=loss).train()
    >>> layers = loss.layers_for_step()  # by hand: [4, 3, 2], every earlier depth (n_layers_per_step=-1)
    >>> outs = [model(**inputs, output_layer_embeddings=layers) for inputs in (anchor_inputs, positive_inputs)]
    >>> embeddings = [o.full_embeddings for o in outs] + [o.layer_embeddings[k] for k in layers for o in outs]
    >>> value = loss(embeddings)
    ```
    """

    def __init__(self, loss, matryoshka_layers, layer_weights=None, n_layers_per_step=-1, alignment_weight=1.0,
                 alignment="similarity_kl", alignment_temperature=0.05):
        super().__init__()
        if getattr(loss, "sums_over_sizes", False):
            raise ValueError(
                f"MatryoshkaDepthLoss trains embeddings at earlier depths; {type(loss).__name__} trains a "
                "classifier's nested heads. Wrap an embedding loss, e.g. MatryoshkaLoss.from_config(config, "
                "InfoNCELoss())."
            )
        if find_quantization_aware(loss) is not None:
            # Its int8 ranges are tracked per size, not per depth: every depth's values would fold into one range.
            raise ValueError(
                "MatryoshkaDepthLoss cannot wrap a QuantizationAwareLoss: the int8 ranges it tracks are per size, "
                "and each depth's embeddings have ranges of their own. Train depths and precisions apart, or train "
                "depths with float32 only and call `model.calibrate_quantization(texts, layers=[...])` afterwards."
            )
        layers = [int(k) for k in matryoshka_layers or ()]
        if len(layers) < 2:
            raise ValueError(
                f"Depth training needs at least one depth below the full one; got matryoshka_layers={layers or None}. "
                "Set e.g. matryoshka_layers=[6, 4, 3, 2] in the model's config (MatryoshkaConfig)."
            )
        weights = [1.0] * len(layers) if layer_weights is None else [float(w) for w in layer_weights]
        if len(weights) != len(layers) or any(not (w >= 0 and w < float("inf")) for w in weights):
            raise ValueError(
                f"layer_weights={layer_weights!r}: give one finite weight >= 0 per depth of {layers} (same order)."
            )
        order = sorted(range(len(layers)), key=lambda i: -layers[i])
        self.loss = loss
        self.matryoshka_layers = [layers[i] for i in order]
        self.layer_weights = [weights[i] for i in order]
        earlier = len(layers) - 1
        if isinstance(n_layers_per_step, bool) or not isinstance(n_layers_per_step, int) or not (
            1 <= n_layers_per_step <= earlier or n_layers_per_step == -1
        ):
            raise ValueError(f"n_layers_per_step={n_layers_per_step!r} must be an integer in 1..{earlier}, or -1 for "
                             "every earlier depth each step.")
        if not (alignment_weight >= 0 and alignment_weight < float("inf")):
            raise ValueError(f"alignment_weight={alignment_weight!r} must be a finite number >= 0.")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment={alignment!r}: choose one of {', '.join(ALIGNMENTS)}.")
        if not (alignment_temperature > 0 and alignment_temperature < float("inf")):
            raise ValueError(f"alignment_temperature={alignment_temperature!r} must be a finite number > 0 (0.05 is "
                             "usual).")
        self.n_layers_per_step = n_layers_per_step
        self.alignment_weight = float(alignment_weight)
        self.alignment = alignment
        self.alignment_temperature = float(alignment_temperature)
        self.step_layers = []

    @classmethod
    def from_config(cls, config, loss, **kwargs):
        """Depths from a `MatryoshkaConfig`'s `matryoshka_layers` (the single source of truth)."""
        return cls(loss, getattr(config, "matryoshka_layers", None), **kwargs)

    # The dataset layout and the batch-computed targets are the wrapped loss's.
    min_text_columns = property(lambda self: getattr(self.loss, "min_text_columns", 1))
    max_text_columns = property(lambda self: getattr(self.loss, "max_text_columns", None))
    needs_labels = property(lambda self: getattr(self.loss, "needs_labels", None))
    teacher_tokenizer = property(lambda self: getattr(self.loss, "teacher_tokenizer", None))
    # Cached (GradCache) training is the wrapped MatryoshkaLoss's option; the earlier depths come from the same passes.
    mini_batch_size = property(lambda self: getattr(self.loss, "mini_batch_size", None))

    # A size schedule's knob reaches the wrapped MatryoshkaLoss through the wrapper, at every depth; absent when the
    # wrapped loss has none (a single-size loss has no smaller sizes to schedule).
    smaller_sizes_scale = property(lambda self: self.loss.smaller_sizes_scale,
                                   lambda self, value: setattr(self.loss, "smaller_sizes_scale", value))

    @property
    def citation(self):
        base = getattr(self.loss, "citation", None)
        return DEPTH_CITATION if not base else f"{base}\n\n{DEPTH_CITATION}"

    def compute_labels(self, columns, labels):
        compute = getattr(self.loss, "compute_labels", None)
        return labels if compute is None else compute(columns, labels)

    def layers_for_step(self):
        """Sample this step's earlier depths (deepest first) and remember them for the next call of the loss."""
        earlier = self.matryoshka_layers[1:]
        count = len(earlier) if self.n_layers_per_step == -1 else self.n_layers_per_step
        self.step_layers = sorted(random.sample(earlier, count), reverse=True)
        return list(self.step_layers)

    def forward(self, embeddings, labels=None):
        """`embeddings`: the final layer's full-size tensor per text column, then the tensors of every column at each
        depth of the last `layers_for_step()` (in that order). Without sampled depths: the wrapped loss alone."""
        if isinstance(embeddings, torch.Tensor):
            embeddings = [embeddings]
        groups = 1 + len(self.step_layers)
        if len(embeddings) % groups:
            raise ValueError(
                f"MatryoshkaDepthLoss got {len(embeddings)} tensors for {groups} depths (final + {self.step_layers}); "
                "pass the final layer's tensor per text column, then each column's tensor at every depth "
                "layers_for_step() returned."
            )
        columns = len(embeddings) // groups
        final = embeddings[:columns]
        weight_of = dict(zip(self.matryoshka_layers, self.layer_weights))
        total = self.layer_weights[0] * self.loss(final, labels)
        for group, depth in enumerate(self.step_layers, start=1):
            earlier = embeddings[group * columns : (group + 1) * columns]
            term = self.loss(earlier, labels)
            if self.alignment_weight:
                term = term + self.alignment_weight * self.align(earlier, final)
            total = total + weight_of[depth] * term / len(self.step_layers)
        self.step_layers = []  # one loss call per sampled step; a call without sampling trains full depth only
        return total

    def align(self, earlier, final):
        """The alignment of one depth's tensors (one per text column) to the final layer's (detached)."""
        if self.alignment == "similarity_kl":
            return similarity_kl_loss(torch.cat(earlier), torch.cat(final), self.alignment_temperature)
        return sum(alignment_loss(e, f) for e, f in zip(earlier, final)) / len(final)

    def get_config_dict(self):
        """What trained the model, for its card: the wrapped loss's config and the depth options."""
        base_config = getattr(self.loss, "get_config_dict", dict)
        return {
            **base_config(),
            "depth_loss": type(self.loss).__name__,
            "matryoshka_layers": list(self.matryoshka_layers),
            "layer_weights": list(self.layer_weights),
            "n_layers_per_step": self.n_layers_per_step,
            "alignment_weight": self.alignment_weight,
            "alignment": self.alignment,
            **({"alignment_temperature": self.alignment_temperature} if self.alignment == "similarity_kl" else {}),
        }


__all__ = ["ALIGNMENTS", "MatryoshkaDepthLoss", "alignment_loss", "similarity_kl_loss"]
