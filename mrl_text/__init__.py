"""mrl-text: Matryoshka embeddings for Hugging Face encoders.

Importing the package registers the "matryoshka" model types with transformers' Auto classes and marks the
classes for `trust_remote_code` export, so `save_pretrained` copies the modeling code next to the weights.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .adaptive import AdaptiveClassifier
from .configuration_matryoshka import MatryoshkaConfig
from .configuration_matryoshka_dual_encoder import MatryoshkaDualEncoderConfig
from .model_card import write_card_on_save
from .modeling_matryoshka import (
    MatryoshkaForSequenceClassification,
    MatryoshkaLinear,
    MatryoshkaModel,
    MatryoshkaModelOutput,
    MatryoshkaPreTrainedModel,
    MatryoshkaSequenceClassifierOutput,
    truncate_embeddings,
)
from .modeling_matryoshka_dual_encoder import MatryoshkaDualEncoder, MatryoshkaDualEncoderOutput

__version__ = "0.1.0"

for _config, _auto, _model in (
    (MatryoshkaConfig, AutoModel, MatryoshkaModel),
    (MatryoshkaConfig, AutoModelForSequenceClassification, MatryoshkaForSequenceClassification),
    (MatryoshkaDualEncoderConfig, AutoModel, MatryoshkaDualEncoder),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    _auto.register(_config, _model, exist_ok=True)
    _config.register_for_auto_class()
    _model.register_for_auto_class(_auto.__name__)

# Model cards: save_pretrained / push_to_hub write README.md + results plot when a model carries results.
if write_card_on_save not in MatryoshkaPreTrainedModel.save_hooks:
    MatryoshkaPreTrainedModel.save_hooks.append(write_card_on_save)

# Training: MatryoshkaTrainer loads transformers' Trainer (a second of imports), so it is imported on first use.
_TRAINING_NAMES = ("MatryoshkaTrainer", "MatryoshkaTrainingArguments", "MatryoshkaDataCollator")


def __getattr__(name):
    if name in _TRAINING_NAMES:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'mrl_text' has no attribute {name!r}")


__all__ = [
    "AdaptiveClassifier",
    "MatryoshkaConfig",
    "MatryoshkaDualEncoder",
    "MatryoshkaDualEncoderConfig",
    "MatryoshkaDualEncoderOutput",
    "MatryoshkaForSequenceClassification",
    "MatryoshkaLinear",
    "MatryoshkaModel",
    "MatryoshkaModelOutput",
    "MatryoshkaPreTrainedModel",
    "MatryoshkaSequenceClassifierOutput",
    "truncate_embeddings",
    *_TRAINING_NAMES,
]
