"""Distillation: the student's embeddings learn a teacher's, at every size when wrapped in `MatryoshkaLoss`."""

import torch
from torch import nn

from .base import unpack


class DistillMSELoss(nn.Module):
    """Distillation: mean squared error between the student's embeddings and a teacher's embeddings.

    The teacher belongs to this loss: it is frozen here and embeds each batch's texts (`compute_labels`, called by
    the trainer with the texts tokenized by `teacher_tokenizer`). Without a teacher, the labels carry the teacher's
    embeddings, precomputed (one vector per row). Wrapped in `MatryoshkaLoss`, the teacher's embeddings are truncated
    (and re-normalized) to every size by the same `truncate_embeddings` call as the student's, so each student
    prefix learns the matching teacher prefix.

    Reference: Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
    Distillation", EMNLP 2020.

    Args:
        teacher (*optional*): a model whose output has `full_embeddings` (e.g. a `MatryoshkaModel`, with its
            `tokenizer`); frozen (eval mode, no gradients).

    Inputs: `loss([student], labels)`: the student's `(batch, dim)` embeddings and the teacher's, same shape; no
    gradient flows into the teacher.
    """

    min_text_columns, max_text_columns = 1, 1
    embedding_labels = True
    citation = """@inproceedings{reimers2020multilingual,
  title     = {Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation},
  author    = {Reimers, Nils and Gurevych, Iryna},
  booktitle = {Proceedings of the 2020 Conference on Empirical Methods in Natural Language Processing},
  year      = {2020},
  url       = {https://arxiv.org/abs/2004.09813}
}"""

    def __init__(self, teacher=None):
        super().__init__()
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False)

    @property
    def needs_labels(self):
        return self.teacher is None

    @property
    def teacher_tokenizer(self):
        return getattr(self.teacher, "tokenizer", None)

    def compute_labels(self, columns, labels):
        """The teacher's full-size embeddings of the batch's one text column (`columns`: column -> tokenizer
        outputs), or, without a teacher, the precomputed embeddings in `labels`."""
        if self.teacher is None:
            if labels is None or labels.dim() != 2:
                raise ValueError(
                    "Distillation needs a teacher: pass DistillMSELoss(teacher=...) to MatryoshkaTrainer(loss=...), "
                    "or put the teacher's embeddings (one vector per row) in the 'label' column."
                )
            return labels.float()
        (features,) = columns.values()
        with torch.no_grad():
            return self.teacher(**features).full_embeddings

    def forward(self, embeddings, labels):
        (student,) = unpack(embeddings, ["student"], self)
        if labels is None:
            raise ValueError("DistillMSELoss needs the teacher's embeddings as `labels` (see compute_labels).")
        if student.shape != labels.shape:
            raise ValueError(
                f"Student embeddings {tuple(student.shape)} and teacher embeddings {tuple(labels.shape)} differ in "
                "shape; the teacher's embedding size must be at least the student's."
            )
        return nn.functional.mse_loss(student, labels.detach())

    def get_config_dict(self):
        name = getattr(getattr(self.teacher, "config", None), "name_or_path", None)
        return {"teacher": None if self.teacher is None else name or type(self.teacher).__name__}


__all__ = ["DistillMSELoss"]
