"""What every loss here shares: the call `loss(embeddings: list[Tensor], labels: Tensor | None)` and the paper's
reference.

`embeddings` holds one full-size tensor per text column (anchor, positive, ...), computed once per step; `labels` the
batch's targets (scores, class ids, a teacher's embeddings) or None. `MatryoshkaLoss` (matryoshka.py) applies a loss
with this call to every nested prefix of the same embeddings.

What a loss may declare, read by `MatryoshkaTrainer` (never the loss's name): the layout it reads
(`min_text_columns`, `max_text_columns`, `needs_labels`); targets it computes from the batch (`compute_labels`, over
texts tokenized with `teacher_tokenizer`); labels that are embeddings, truncated like the student's
(`embedding_labels`); sizes it weights itself (`sums_over_sizes`, never wrapped); `smaller_sizes_scale`, the knob a
`SizeSchedule` turns; and `get_config_dict()` and `citation` (BibTeX), so a model card says exactly what trained the
model.
"""

import torch

MATRYOSHKA_CITATION = """@inproceedings{kusupati2022matryoshka,
  title     = {Matryoshka Representation Learning},
  author    = {Kusupati, Aditya and Bhatt, Gantavya and Rege, Aniket and Wallingford, Matthew and Sinha, Aditya and Ramanujan, Vivek and Howard-Snyder, William and Chen, Kaifeng and Kakade, Sham and Jain, Prateek and Farhadi, Ali},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2022},
  url       = {https://arxiv.org/abs/2205.13147}
}"""  # noqa: E501 (BibTeX: one author list per line, as the reference gives it)


def unpack(embeddings, names, loss):
    """`embeddings` as the tensors `names` lists (a `*name` takes any number more), or an error saying the call."""
    required = len([name for name in names if not name.startswith("*")])
    count = -1 if isinstance(embeddings, torch.Tensor) else len(embeddings)
    if count != required and not (count > required and required < len(names)):
        raise ValueError(
            f"{type(loss).__name__} is called as loss([{', '.join(names)}], labels), one full-size tensor per text "
            f"column; got {'one tensor' if count < 0 else f'{count} tensor(s)'}."
        )
    return embeddings


__all__ = ["MATRYOSHKA_CITATION", "unpack"]
