"""mrl-text: Matryoshka embeddings for Hugging Face encoders.

Importing the package registers the "matryoshka" model types with transformers' Auto classes and marks them for
`trust_remote_code` export (`mrl_text.models`), and registers the save hooks that write the sentence-transformers
files and the model card next to every saved model.

What needs more than the travelling model code is a function of this package, never a method attached to a model
class from outside: a model loaded with `trust_remote_code` (where mrl-text's classes are copies from the folder)
goes through the same functions: `export_model(model, path)`, `push_exported_to_hub(model, repo_id, format)`,
`add_adaptor(model, corpus)`, `from_sentence_transformer(name_or_model, matryoshka_dimensions)`.
"""

from .adaptor import add_adaptor
from .cards.card import write_card_on_save
from .deploy import AdaptiveClassifier, FunnelIndex, export_model, push_exported_to_hub
from .deploy.sentence_transformers_files import write_sentence_transformers_files
from .models import (
    MatryoshkaAdaptor,
    MatryoshkaAdaptorConfig,
    MatryoshkaConfig,
    MatryoshkaDualEncoder,
    MatryoshkaDualEncoderConfig,
    MatryoshkaDualEncoderOutput,
    MatryoshkaForMaskedLM,
    MatryoshkaForSequenceClassification,
    MatryoshkaLinear,
    MatryoshkaLMHead,
    MatryoshkaMaskedLMOutput,
    MatryoshkaModel,
    MatryoshkaModelOutput,
    MatryoshkaPreTrainedModel,
    MatryoshkaSequenceClassifierOutput,
    truncate_embeddings,
)
from .models.sentence_transformers_matryoshka import from_sentence_transformer

__version__ = "0.1.0"

# Files written beside every saved model: sentence-transformers' (text embedding models), then the model card and
# its results plot (models that carry results). Where only transformers is installed the list stays empty.
for _hook in (write_sentence_transformers_files, write_card_on_save):
    if _hook not in MatryoshkaPreTrainedModel.save_hooks:
        MatryoshkaPreTrainedModel.save_hooks.append(_hook)

# Training: the trainer loads transformers' Trainer (a second of imports), so it is imported on first use.
_TRAINING_NAMES = ("MatryoshkaTrainer", "MatryoshkaTrainingArguments", "MatryoshkaDataCollator", "SizeSchedule")


def __getattr__(name):
    if name in _TRAINING_NAMES:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module 'mrl_text' has no attribute {name!r}")


__all__ = [
    "AdaptiveClassifier",
    "FunnelIndex",
    "MatryoshkaAdaptor",
    "MatryoshkaAdaptorConfig",
    "MatryoshkaConfig",
    "MatryoshkaDualEncoder",
    "MatryoshkaDualEncoderConfig",
    "MatryoshkaDualEncoderOutput",
    "MatryoshkaForMaskedLM",
    "MatryoshkaForSequenceClassification",
    "MatryoshkaLMHead",
    "MatryoshkaLinear",
    "MatryoshkaMaskedLMOutput",
    "MatryoshkaModel",
    "MatryoshkaModelOutput",
    "MatryoshkaPreTrainedModel",
    "MatryoshkaSequenceClassifierOutput",
    "add_adaptor",
    "export_model",
    "from_sentence_transformer",
    "push_exported_to_hub",
    "truncate_embeddings",
    *_TRAINING_NAMES,
]
