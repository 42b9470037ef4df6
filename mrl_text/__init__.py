"""mrl-text: Matryoshka embeddings for Hugging Face encoders.

Importing the package registers the "matryoshka" model types with transformers' Auto classes, marks the text classes
for `trust_remote_code` export (so `save_pretrained` copies the modeling code next to the weights) and registers the
save hooks that write the model card and the sentence-transformers files.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from .adaptive import AdaptiveClassifier
from .configuration_matryoshka import MatryoshkaConfig
from .image_text import MatryoshkaDualEncoder, MatryoshkaDualEncoderConfig, MatryoshkaDualEncoderOutput
from .model_card import write_card_on_save
from .modeling_matryoshka import MatryoshkaModel, MatryoshkaModelOutput, MatryoshkaPreTrainedModel, truncate_embeddings
from .modeling_matryoshka_classification import (
    MatryoshkaForSequenceClassification,
    MatryoshkaLinear,
    MatryoshkaSequenceClassifierOutput,
)
from .modeling_matryoshka_mlm import MatryoshkaForMaskedLM, MatryoshkaLMHead, MatryoshkaMaskedLMOutput
from .sentence_transformers_files import write_sentence_transformers_files

__version__ = "0.1.0"

AutoConfig.register(MatryoshkaConfig.model_type, MatryoshkaConfig, exist_ok=True)
MatryoshkaConfig.register_for_auto_class()
_TEXT_MODELS = (
    (AutoModel, MatryoshkaModel),
    (AutoModelForSequenceClassification, MatryoshkaForSequenceClassification),
    (AutoModelForMaskedLM, MatryoshkaForMaskedLM),
)
for _auto, _model in _TEXT_MODELS:
    _auto.register(MatryoshkaConfig, _model, exist_ok=True)
    _model.register_for_auto_class(_auto.__name__)

# Files written beside every saved model: sentence-transformers' (text embedding models), then the model card and
# its results plot (models that carry results).
for _hook in (write_sentence_transformers_files, write_card_on_save):
    if _hook not in MatryoshkaPreTrainedModel.save_hooks:
        MatryoshkaPreTrainedModel.save_hooks.append(_hook)


def _from_sentence_transformer(cls, model_name_or_path_or_model, matryoshka_dimensions=None, **kwargs):
    """Wrap a sentence-transformers model (hub id, folder or loaded `SentenceTransformer`) for MRL fine-tuning.

    `mrl_text.sentence_transformers.from_sentence_transformer` with this class; see it for the arguments.
    """
    from .sentence_transformers import from_sentence_transformer

    return from_sentence_transformer(model_name_or_path_or_model, matryoshka_dimensions, model_class=cls, **kwargs)


# Lives in mrl_text.sentence_transformers (the modeling file, which travels alone to the Hub, must not need
# sentence-transformers); attached here so that the documented `MatryoshkaModel.from_sentence_transformer` works.
MatryoshkaModel.from_sentence_transformer = classmethod(_from_sentence_transformer)



def _export(self, path, format="sentence-transformers", overwrite=False):
    """Write a standard folder of the encoder's own type that serving engines load without remote code.

    `mrl_text.export.export_model` for this model; see it for the formats and what is refused.
    """
    from .export import export_model

    return export_model(self, path, format=format, overwrite=overwrite)


_push_mrl_text_folder = MatryoshkaModel.push_to_hub


def _push_to_hub(self, repo_id, *, format=None, **kwargs):
    """`push_to_hub` of the mrl-text folder, or with `format` (e.g. "sentence-transformers") of the exported folder
    (`mrl_text.export.push_exported_to_hub`)."""
    if format is None:
        return _push_mrl_text_folder(self, repo_id, **kwargs)
    from .export import push_exported_to_hub

    return push_exported_to_hub(self, repo_id, format, **kwargs)


# Like from_sentence_transformer: the exporter needs the installed package, so the modeling file (which travels
# alone to the Hub) does not carry it.
MatryoshkaModel.export = _export
MatryoshkaModel.push_to_hub = _push_to_hub



def _add_adaptor(self, corpus=None, pairs=None, **kwargs):
    """Fit a Matryoshka adaptor on `corpus` texts (and (query, document) `pairs`) with this model's own embeddings
    and attach it, or attach a fitted one (`adaptor=`); returns the adaptor.

    `mrl_text.adaptor_model.add_adaptor` for this model; see it for the arguments.
    """
    from .adaptor_model import add_adaptor

    return add_adaptor(self, corpus, pairs, **kwargs)


# Fitting needs the training code (mrl_text.adaptor), which the modeling file (travelling alone) cannot import.
MatryoshkaModel.add_adaptor = _add_adaptor

# Training: MatryoshkaTrainer loads transformers' Trainer (a second of imports), so it is imported on first use.
_TRAINING_NAMES = (
    "MatryoshkaTrainer", "MatryoshkaTrainingArguments", "MatryoshkaDataCollator", "MatryoshkaScheduleCallback"
)


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
    "MatryoshkaForMaskedLM",
    "MatryoshkaForSequenceClassification",
    "MatryoshkaLMHead",
    "MatryoshkaLinear",
    "MatryoshkaMaskedLMOutput",
    "MatryoshkaModel",
    "MatryoshkaModelOutput",
    "MatryoshkaPreTrainedModel",
    "MatryoshkaSequenceClassifierOutput",
    "truncate_embeddings",
    *_TRAINING_NAMES,
]
