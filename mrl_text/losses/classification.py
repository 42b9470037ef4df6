"""The Matryoshka cross-entropy of nested classification heads, as a loss object."""

from torch import nn

from .base import MATRYOSHKA_CITATION, unpack


class MatryoshkaCrossEntropyLoss(nn.Module):
    """The paper's Matryoshka cross-entropy: the weighted sum over sizes of each nested head's classification loss.

    The nested heads (MRL, or weight-tied MRL-E by `config.efficient_heads`) and the math (`matryoshka_loss`, weights
    from `config.matryoshka_weights`) live in `MatryoshkaForSequenceClassification`, which computes this loss itself
    when called with `labels` (transformers' convention; `MatryoshkaTrainer` trains on that, and builds this loss by
    default for such a model). This class holds the model, as sentence-transformers' losses do: it applies the heads
    to full-size embeddings computed elsewhere, passes a size schedule's `smaller_sizes_scale` on to the model, and
    tells a model card what trained them. It weights the sizes itself, so it is never wrapped in `MatryoshkaLoss`.

    Reference: Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022, Eq. 1 (MRL) and Sec. 3 (MRL-E).

    Args:
        model ([`MatryoshkaForSequenceClassification`]): the classification model (or a DDP wrapper around it).

    Inputs: `loss([pooled], labels)`: the full pooled embeddings `(batch, embedding_size)` (the model output's
    `embeddings`) and the labels `(batch,)`.
    """

    min_text_columns, max_text_columns, needs_labels = 1, 1, True
    sums_over_sizes = True
    citation = MATRYOSHKA_CITATION

    def __init__(self, model):
        super().__init__()
        classifier = getattr(model, "module", model)  # DDP / DataParallel wrappers keep the model in .module
        if not hasattr(classifier, "matryoshka_loss"):
            raise ValueError(
                f"MatryoshkaCrossEntropyLoss trains nested classification heads; {type(classifier).__name__} has "
                "none. Use mrl_text.MatryoshkaForSequenceClassification (config with num_labels)."
            )
        self.model = model

    @property
    def smaller_sizes_scale(self):
        """The size schedule's knob, kept on the model: the heads' loss (`matryoshka_loss`) reads it there."""
        return getattr(self.model, "module", self.model).smaller_sizes_scale

    @smaller_sizes_scale.setter
    def smaller_sizes_scale(self, value):
        getattr(self.model, "module", self.model).smaller_sizes_scale = value

    def forward(self, embeddings, labels):
        (pooled,) = unpack(embeddings, ["pooled"], self)
        classifier = getattr(self.model, "module", self.model)
        return classifier.matryoshka_loss(classifier.classifier(pooled), labels)

    def get_config_dict(self):
        config = getattr(self.model, "module", self.model).config
        return {
            "matryoshka_dimensions": list(config.matryoshka_dimensions),
            "matryoshka_weights": list(config.matryoshka_weights),
            "efficient_heads": config.efficient_heads,
            "num_labels": config.num_labels,
        }


__all__ = ["MatryoshkaCrossEntropyLoss"]
