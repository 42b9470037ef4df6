"""InfoNCE with in-batch (and hard) negatives, the contrastive loss of pairs and triplets."""

import torch
from torch import nn

from ..distributed import in_batch_targets
from .base import unpack


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

    Inputs: `loss([anchor, positive, *negatives], labels=None)`, each `(batch, dim)` and unit length. Anchor `i`'s
    positive is candidate `i` of the global batch; all other positives and all hard negatives are its negatives.
    Wrap it in `MatryoshkaLoss` (example there) to train every size.
    """

    # What the trainer's data must hold: text columns (anchor, positive, hard negatives...) and no label column.
    min_text_columns, max_text_columns, needs_labels = 2, None, False
    citation = """@article{oord2018representation,
  title   = {Representation Learning with Contrastive Predictive Coding},
  author  = {van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  journal = {arXiv preprint arXiv:1807.03748},
  year    = {2018}
}"""

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

    def logits(self, embeddings):
        """`(scale * cos(anchor, candidate), targets)`: each anchor's scores over the global batch's candidates."""
        anchor, positive, *negatives = unpack(embeddings, ["anchor", "positive", "*negatives"], self)
        gather, targets = in_batch_targets(anchor.shape[0], anchor.device, self.gather_across_devices)
        candidates = torch.cat([gather(positive)] + [gather(n) for n in negatives], dim=0)
        return self.scale * anchor @ candidates.T, targets

    def forward(self, embeddings, labels=None):
        anchor, positive, *_ = unpack(embeddings, ["anchor", "positive", "*negatives"], self)
        loss = nn.functional.cross_entropy(*self.logits(embeddings))
        if self.symmetric:
            gather, targets = in_batch_targets(anchor.shape[0], anchor.device, self.gather_across_devices)
            loss = (loss + nn.functional.cross_entropy(self.scale * positive @ gather(anchor).T, targets)) / 2
        return loss

    def get_config_dict(self):
        return {"scale": self.scale, "symmetric": self.symmetric, "gather_across_devices": self.gather_across_devices}

    def extra_repr(self):
        return ", ".join(f"{key}={value}" for key, value in self.get_config_dict().items())


__all__ = ["InfoNCELoss"]
