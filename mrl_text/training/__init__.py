"""Training Matryoshka models with the Hugging Face `Trainer`: `MatryoshkaTrainer` and its arguments, the collator,
the size schedule, the optimizer's parameter groups and the metrics it logs."""

from .collator import MatryoshkaDataCollator
from .metrics import classification_compute_metrics, metrics_for_trainer
from .schedule import MatryoshkaScheduleCallback
from .trainer import MatryoshkaTrainer, MatryoshkaTrainingArguments

__all__ = [
    "MatryoshkaDataCollator",
    "MatryoshkaScheduleCallback",
    "MatryoshkaTrainer",
    "MatryoshkaTrainingArguments",
    "classification_compute_metrics",
    "metrics_for_trainer",
]
