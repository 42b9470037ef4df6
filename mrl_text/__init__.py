"""mrl-text: Matryoshka embeddings for Hugging Face encoders.

Importing the package registers the "matryoshka" model type with transformers' Auto classes and marks the
classes for `trust_remote_code` export, so `save_pretrained` copies the modeling code next to the weights.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .configuration_matryoshka import MatryoshkaConfig
from .modeling_matryoshka import (
    MatryoshkaForSequenceClassification,
    MatryoshkaLinear,
    MatryoshkaModel,
    MatryoshkaModelOutput,
    MatryoshkaPreTrainedModel,
    MatryoshkaSequenceClassifierOutput,
    truncate_embeddings,
)

__version__ = "0.1.0"

AutoConfig.register(MatryoshkaConfig.model_type, MatryoshkaConfig, exist_ok=True)
AutoModel.register(MatryoshkaConfig, MatryoshkaModel, exist_ok=True)
AutoModelForSequenceClassification.register(MatryoshkaConfig, MatryoshkaForSequenceClassification, exist_ok=True)

MatryoshkaConfig.register_for_auto_class()
MatryoshkaModel.register_for_auto_class("AutoModel")
MatryoshkaForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

# Model cards: save_pretrained / push_to_hub write README.md + results plot when a model carries results.
from .model_card import write_card_on_save  # noqa: E402

if write_card_on_save not in MatryoshkaPreTrainedModel.save_hooks:
    MatryoshkaPreTrainedModel.save_hooks.append(write_card_on_save)

__all__ = [
    "MatryoshkaConfig",
    "MatryoshkaForSequenceClassification",
    "MatryoshkaLinear",
    "MatryoshkaModel",
    "MatryoshkaModelOutput",
    "MatryoshkaPreTrainedModel",
    "MatryoshkaSequenceClassifierOutput",
    "truncate_embeddings",
]
from .adaptive import AdaptiveClassifier  # noqa: E402  (adaptive deployment)
__all__ += ["AdaptiveClassifier"]
