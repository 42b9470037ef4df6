"""Training Matryoshka models with the Hugging Face `Trainer`: `MatryoshkaTrainer` and its arguments, the collator,
the size schedule, the optimizer's parameter groups and the metrics it logs. The losses it trains with are objects
from `mrl_text.losses`."""

from .collator import ImageTextDataCollator, MatryoshkaDataCollator
from .metrics import classification_compute_metrics, metrics_for_trainer
from .schedule import SizeSchedule
from .sharding import fully_shard_model
from .trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments

__all__ = [
    "ImageTextDataCollator",
    "MatryoshkaDataCollator",
    "MatryoshkaTrainer",
    "MatryoshkaTrainingArguments",
    "SizeSchedule",
    "classification_compute_metrics",
    "fully_shard_model",
    "metrics_for_trainer",
]
