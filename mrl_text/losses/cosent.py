"""CoSENT, the ranking loss of scored pairs (STS-style data)."""

import torch
from torch import nn

from .base import unpack


class CoSENTLoss(nn.Module):
    """CoSENT: a ranking loss for scored pairs; every pair scored higher must have the higher cosine similarity.

    loss = log(1 + sum over pairs (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i))).
    Only the order of the scores matters, so STS-style 0-5 scores need no rescaling.

    Reference: Su Jianlin, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT" (2022),
    https://kexue.fm/archives/8847.

    Args:
        scale (`float`): inverse temperature applied to the cosine differences (20.0 as in the reference).

    Inputs: `loss([embeddings1, embeddings2], labels)`: two `(batch, dim)` tensors and the pairs' scores `(batch,)`.
    """

    min_text_columns, max_text_columns, needs_labels = 2, 2, True
    citation = """@online{su2022cosent,
  title  = {CoSENT: A more efficient sentence vector scheme than Sentence-BERT},
  author = {Su, Jianlin},
  year   = {2022},
  url    = {https://kexue.fm/archives/8847}
}"""

    def __init__(self, scale=20.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale={scale!r} must be > 0 (20.0 is usual).")
        self.scale = float(scale)

    def forward(self, embeddings, labels):
        embeddings1, embeddings2 = unpack(embeddings, ["embeddings1", "embeddings2"], self)
        if labels is None:
            raise ValueError("CoSENTLoss needs the pairs' scores: pass `labels` (a 'score' or 'label' column).")
        cosines = nn.functional.cosine_similarity(embeddings1, embeddings2, dim=-1) * self.scale
        differences = cosines[None, :] - cosines[:, None]  # [i, j] = cos_j - cos_i
        ranked = labels[:, None] > labels[None, :]  # pair i should score above pair j
        differences = differences[ranked.to(differences.device)]
        # The leading zero is the "1 +" inside the log.
        return torch.logsumexp(torch.cat([differences.new_zeros(1), differences]), dim=0)

    def get_config_dict(self):
        return {"scale": self.scale}

    def extra_repr(self):
        return f"scale={self.scale}"


__all__ = ["CoSENTLoss"]
