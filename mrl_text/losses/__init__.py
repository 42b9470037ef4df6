"""Losses for Matryoshka training, all called alike: `loss(embeddings: list[Tensor], labels: Tensor | None)`.

One file per family: `contrastive` (InfoNCE), `cosent`, `distillation`, `classification` (the nested heads'
cross-entropy), `image_text` (CLIP/ALIGN InfoNCE), `matryoshka` (the wrapper that applies a loss to every nested
prefix), `depth` (2D Matryoshka: every depth from one pass), `cached` (GradCache: large batches in mini-batches,
`MatryoshkaLoss(..., mini_batch_size=32)`), `quantization_aware` (int8/binary codes trained in the loop, inside
`MatryoshkaLoss`); `base` holds the call they share, `registry` their
names for configuration files. Loss objects are handed to `MatryoshkaTrainer(loss=...)`; their options live on them:

    loss = MatryoshkaLoss.from_config(model.config, InfoNCELoss(scale=20.0, symmetric=True), n_dims_per_step=4)
    trainer = MatryoshkaTrainer(model=model, args=args, train_dataset=pairs, loss=loss)
"""

from .base import MATRYOSHKA_CITATION, unpack
from .cached import GRADCACHE_CITATION, cached_loss
from .classification import MatryoshkaCrossEntropyLoss
from .contrastive import InfoNCELoss
from .cosent import CoSENTLoss
from .depth import MatryoshkaDepthLoss
from .distillation import DistillMSELoss
from .image_text import ImageTextInfoNCELoss
from .matryoshka import MatryoshkaLoss
from .quantization_aware import QuantizationAwareLoss
from .registry import LOSSES, get_loss

__all__ = [
    "LOSSES",
    "MATRYOSHKA_CITATION",
    "CoSENTLoss",
    "DistillMSELoss",
    "GRADCACHE_CITATION",
    "ImageTextInfoNCELoss",
    "InfoNCELoss",
    "MatryoshkaCrossEntropyLoss",
    "MatryoshkaDepthLoss",
    "MatryoshkaLoss",
    "QuantizationAwareLoss",
    "cached_loss",
    "get_loss",
    "unpack",
]
