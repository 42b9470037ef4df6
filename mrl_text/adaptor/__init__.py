"""Matryoshka adaptors for finished models: fit a small map on frozen embeddings so that their prefixes become good
embeddings (`fit`), attach it to a model (`add_adaptor`), and the validation metrics the fit gates on."""

from ..models.modeling_matryoshka_adaptor import MatryoshkaAdaptor, MatryoshkaAdaptorConfig
from .attach import add_adaptor, default_dimensions, read_corpus, read_pairs
from .fitting import DEFAULTS, fit, pca_rotation, transform

__all__ = [
    "DEFAULTS",
    "MatryoshkaAdaptor",
    "MatryoshkaAdaptorConfig",
    "add_adaptor",
    "default_dimensions",
    "fit",
    "pca_rotation",
    "read_corpus",
    "read_pairs",
    "transform",
]
