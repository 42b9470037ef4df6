"""Model cards: the data training and evaluation collect (`MatryoshkaModelCardData`) and its rendering, with the
per-size results table and plot, next to every saved model."""

from .card import build_card, write_card, write_card_on_save
from .card_data import MatryoshkaModelCardCallback, MatryoshkaModelCardData, model_card_data

__all__ = [
    "MatryoshkaModelCardCallback",
    "MatryoshkaModelCardData",
    "build_card",
    "model_card_data",
    "write_card",
    "write_card_on_save",
]
