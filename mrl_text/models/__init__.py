"""Everything that travels with saved weights: configurations, models, heads, the truncation and quantization rules
and the sentence-transformers module.

`save_pretrained` copies these files, flat, next to the weights (transformers' remote-code saving, through
`register_for_auto_class`), and `trust_remote_code=True` loads the folder on a machine without mrl-text. So every
module here imports only torch, transformers, safetensors, huggingface_hub, numpy and its siblings
(`sentence_transformers_matryoshka.py`, which only sentence-transformers loads, imports that package too);
tests/test_house.py checks it.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from .configuration_matryoshka import MatryoshkaConfig
from .configuration_matryoshka_dual_encoder import MatryoshkaDualEncoderConfig
from .modeling_matryoshka import MatryoshkaModel, MatryoshkaModelOutput, MatryoshkaPreTrainedModel
from .modeling_matryoshka_adaptor import MatryoshkaAdaptor, MatryoshkaAdaptorConfig
from .modeling_matryoshka_classification import (
    MatryoshkaForSequenceClassification,
    MatryoshkaLinear,
    MatryoshkaSequenceClassifierOutput,
)
from .modeling_matryoshka_dual_encoder import (
    MatryoshkaDualEncoder,
    MatryoshkaDualEncoderOutput,
    MatryoshkaDualEncoderPreTrainedModel,
)
from .modeling_matryoshka_mlm import MatryoshkaForMaskedLM, MatryoshkaLMHead, MatryoshkaMaskedLMOutput
from .modeling_matryoshka_utils import truncate_embeddings

# The "matryoshka" model types load with the Auto classes once mrl-text is imported, and `register_for_auto_class`
# makes `save_pretrained` copy the code and write `auto_map`, so the folder loads without mrl-text too.
for _config in (MatryoshkaConfig, MatryoshkaDualEncoderConfig):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    _config.register_for_auto_class()
for _auto, _config, _model in (
    (AutoModel, MatryoshkaConfig, MatryoshkaModel),
    (AutoModelForSequenceClassification, MatryoshkaConfig, MatryoshkaForSequenceClassification),
    (AutoModelForMaskedLM, MatryoshkaConfig, MatryoshkaForMaskedLM),
    (AutoModel, MatryoshkaDualEncoderConfig, MatryoshkaDualEncoder),
):
    _auto.register(_config, _model, exist_ok=True)
    _model.register_for_auto_class(_auto.__name__)

__all__ = [
    "MatryoshkaAdaptor",
    "MatryoshkaAdaptorConfig",
    "MatryoshkaConfig",
    "MatryoshkaDualEncoder",
    "MatryoshkaDualEncoderConfig",
    "MatryoshkaDualEncoderOutput",
    "MatryoshkaDualEncoderPreTrainedModel",
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
]
