"""Image-text Matryoshka models: ALIGN, CLIP or VisionTextDualEncoder with nested image and text embeddings.

Importing this package registers the "matryoshka_dual_encoder" model type with transformers' `AutoConfig` and
`AutoModel`; `save_pretrained` writes the code next to the weights (see `save_code`), so a saved folder loads with
`trust_remote_code=True` where mrl-text is not installed.
"""

import sys

from transformers import AutoConfig, AutoModel

from .. import configuration_matryoshka, modeling_matryoshka

# The image-text files import the text files as siblings (`from .modeling_matryoshka import ...`), which is how
# they sit in a saved model folder; in the package the siblings are the parent package's modules (the same module
# objects, so classes and save hooks are shared).
for _module in (configuration_matryoshka, modeling_matryoshka):
    sys.modules.setdefault(f"{__name__}.{_module.__name__.rsplit('.', 1)[-1]}", _module)

from .configuration_matryoshka_dual_encoder import MatryoshkaDualEncoderConfig  # noqa: E402
from .modeling_matryoshka_dual_encoder import (  # noqa: E402
    MatryoshkaDualEncoder,
    MatryoshkaDualEncoderOutput,
    MatryoshkaDualEncoderPreTrainedModel,
    save_code,
)
from .losses import ImageTextInfoNCELoss  # noqa: E402

AutoConfig.register(MatryoshkaDualEncoderConfig.model_type, MatryoshkaDualEncoderConfig, exist_ok=True)
AutoModel.register(MatryoshkaDualEncoderConfig, MatryoshkaDualEncoder, exist_ok=True)

__all__ = [
    "ImageTextInfoNCELoss",
    "MatryoshkaDualEncoder",
    "MatryoshkaDualEncoderConfig",
    "MatryoshkaDualEncoderOutput",
    "MatryoshkaDualEncoderPreTrainedModel",
    "save_code",
]
