"""The trainer's collator: rows of text columns (and a target column) -> tokenized model inputs per column."""

from dataclasses import dataclass

import torch

# Columns that hold the target rather than text, in every layout.
LABEL_COLUMNS = ("label", "labels", "score")
# Tokenizer outputs the collator forwards to the model; a batch key is "<column>.<one of these>".
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
TEACHER_PREFIX = "teacher:"


@dataclass
class MatryoshkaDataCollator:
    """Tokenize every text column of a batch of rows; the label column (`label`, `labels` or `score`) becomes
    `labels`.

    Each text column `c` gives `c.input_ids`, `c.attention_mask` (and `c.token_type_ids` where the tokenizer makes
    them), padded per column. With `teacher_tokenizer`, each column is tokenized for the teacher too
    (`teacher:c.input_ids`, ...).
    """

    tokenizer: object
    max_seq_length: int = 128
    teacher_tokenizer: object = None

    def __call__(self, rows):
        if not rows:
            raise ValueError("Empty batch: the dataset has no rows.")
        columns = list(rows[0])
        text_columns = [c for c in columns if c not in LABEL_COLUMNS]
        label_columns = [c for c in columns if c in LABEL_COLUMNS]
        if len(label_columns) > 1:
            raise ValueError(f"Several label columns {label_columns}; keep one of {', '.join(LABEL_COLUMNS)}.")
        batch = {}
        for column in text_columns:
            texts = [row[column] for row in rows]
            bad = next((t for t in texts if not isinstance(t, str)), None)
            if bad is not None or any(t is None for t in texts):
                raise ValueError(
                    f"Column {column!r} holds {type(bad).__name__} {bad!r}, not text. Text columns must hold strings; "
                    f"targets go in a column named one of {', '.join(LABEL_COLUMNS)}."
                )
            tokenizers = [("", self.tokenizer)]
            if self.teacher_tokenizer is not None:
                tokenizers.append((TEACHER_PREFIX, self.teacher_tokenizer))
            for prefix, tokenizer in tokenizers:
                tokens = tokenizer(
                    texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"
                )
                for key in TOKENIZER_OUTPUTS:
                    if key in tokens:
                        batch[f"{prefix}{column}.{key}"] = tokens[key]
        if label_columns:
            values = [row[label_columns[0]] for row in rows]
            if any(v is None for v in values):
                raise ValueError(f"Column {label_columns[0]!r} has missing values; every row needs a target.")
            bad = next((v for v in values if isinstance(v, str)), None)
            if bad is not None:
                raise ValueError(
                    f"Column {label_columns[0]!r} holds the string {bad!r}; targets must be numbers. Class names become "
                    "ids with mrl_text.data.load_labelled_text (or dataset.class_encode_column)."
                )
            batch["labels"] = torch.tensor(values)
        return batch


def split_batch(inputs):
    """A collated batch -> (model inputs per text column, teacher inputs per text column, labels or None)."""
    student, teacher = {}, {}
    for key, value in inputs.items():
        if key == "labels":
            continue
        column, _, name = key.rpartition(".")
        target = student
        if column.startswith(TEACHER_PREFIX):
            column, target = column[len(TEACHER_PREFIX) :], teacher
        target.setdefault(column, {})[name] = value
    return student, teacher, inputs.get("labels")
