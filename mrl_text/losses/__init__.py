"""Losses for Matryoshka training, all called alike: `loss(embeddings: list[Tensor], labels: Tensor | None)`.

One file per family: `contrastive` (InfoNCE), `cosent`, `distillation`, `classification` (the nested heads'
cross-entropy), `image_text` (CLIP/ALIGN InfoNCE), `matryoshka` (the wrapper that applies a loss to every nested
prefix), `depth` (2D Matryoshka: every depth from one pass). Loss objects are handed to
`MatryoshkaTrainer(loss=...)`; their options live on them.
"""

from .matryoshka import (
    LOSSES,
    MATRYOSHKA_CITATION,
    CoSENTLoss,
    DistillMSELoss,
    InfoNCELoss,
    MatryoshkaCrossEntropyLoss,
    MatryoshkaLoss,
    get_loss,
    unpack,
)
from .depth import MatryoshkaDepthLoss
from .image_text import ImageTextInfoNCELoss

__all__ = [
    "LOSSES",
    "MATRYOSHKA_CITATION",
    "CoSENTLoss",
    "DistillMSELoss",
    "ImageTextInfoNCELoss",
    "InfoNCELoss",
    "MatryoshkaCrossEntropyLoss",
    "MatryoshkaDepthLoss",
    "MatryoshkaLoss",
    "get_loss",
    "unpack",
]
