"""Deploying Matryoshka models: standard folders and ONNX for serving engines (`export_model`), funnel retrieval
(`FunnelIndex`: shortlist at a small size, rerank at a larger one; `MilvusFunnelIndex`: the same in a Milvus
collection) and adaptive classification cascades (`AdaptiveClassifier`)."""

from .adaptive import AdaptiveClassifier
from .export import EXPORT_FORMATS, export_model, push_exported_to_hub
from .funnel import FunnelIndex, build_exact_index, default_stages, exact_search
from .milvus import MilvusFunnelIndex

__all__ = [
    "EXPORT_FORMATS",
    "AdaptiveClassifier",
    "FunnelIndex",
    "MilvusFunnelIndex",
    "build_exact_index",
    "default_stages",
    "exact_search",
    "export_model",
    "push_exported_to_hub",
]
