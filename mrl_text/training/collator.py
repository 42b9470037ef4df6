"""The trainer's collators: rows of text columns (and a target column) -> tokenized model inputs per column
(`MatryoshkaDataCollator`); rows of an image and its caption -> one dual-encoder batch (`ImageTextDataCollator`)."""

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
                    f"Column {label_columns[0]!r} holds the string {bad!r}; targets must be numbers. Class names "
                    "become ids with mrl_text.data.load_labelled_text (or dataset.class_encode_column)."
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


@dataclass
class ImageTextDataCollator:
    """Rows of an image and its caption -> one `MatryoshkaDualEncoder` batch, each distinct caption tokenized once.

    A row is a mapping with `image_column` and `caption_column`, or an `(image, caption)` pair. The batch holds
    `pixel_values` `(batch, channels, height, width)`, the tokenizer's outputs for the batch's distinct captions
    (`input_ids`, `attention_mask`, ... of shape `(distinct, sequence)`), and `caption_index` `(batch,)`, the row of
    each image's caption among them. Captions made from class names repeat within a batch; tokenizing and encoding
    each one once makes the text tower's cost follow the number of distinct captions, while the loss still pairs every
    image with its caption (`full_text_embeds[caption_index]`), as CLIP's in-batch loss does.

    Args:
        tokenizer: the text tower's tokenizer (`model.tokenizer`).
        max_seq_length (`int`, defaults to 64): captions are truncated to this many tokens.
        image_processor (*optional*): a callable from a list of images to a `(batch, channels, height, width)` tensor
            (e.g. `lambda images: processor(images=images, return_tensors="pt")["pixel_values"]`); default: the
            images are already tensors of that shape per image, stacked.
        image_column (`str`, defaults to `"pixel_values"`), caption_column (`str`, defaults to `"caption"`): the
            keys of mapping rows.
    """

    tokenizer: object
    max_seq_length: int = 64
    image_processor: object = None
    image_column: str = "pixel_values"
    caption_column: str = "caption"

    def __call__(self, rows):
        if not rows:
            raise ValueError("Empty batch: the dataset has no rows.")
        images, captions = zip(*(self._image_and_caption(row) for row in rows))
        bad = next((c for c in captions if not isinstance(c, str)), None)
        if bad is not None or any(c is None for c in captions):
            raise ValueError(
                f"A caption is {type(bad).__name__} {bad!r}, not text; every row needs one caption string."
            )
        distinct = list(dict.fromkeys(captions))
        row_of = {caption: index for index, caption in enumerate(distinct)}
        tokens = self.tokenizer(distinct, padding=True, truncation=True, max_length=self.max_seq_length,
                                return_tensors="pt")
        batch = {key: tokens[key] for key in TOKENIZER_OUTPUTS if key in tokens}
        batch["pixel_values"] = self._pixel_values(list(images))
        batch["caption_index"] = torch.tensor([row_of[caption] for caption in captions])
        return batch

    def _image_and_caption(self, row):
        if isinstance(row, dict):
            missing = [key for key in (self.image_column, self.caption_column) if key not in row]
            if missing:
                raise ValueError(
                    f"A row has keys {sorted(row)} but not {missing}; name the columns with "
                    "ImageTextDataCollator(image_column=..., caption_column=...)."
                )
            return row[self.image_column], row[self.caption_column]
        if isinstance(row, (tuple, list)) and len(row) == 2:
            return row
        raise ValueError(
            f"A row is a {type(row).__name__}; give a mapping of image and caption, or an (image, caption) pair."
        )

    def _pixel_values(self, images):
        if self.image_processor is not None:
            return self.image_processor(images)
        bad = next((image for image in images if not isinstance(image, torch.Tensor)), None)
        if bad is not None:
            raise ValueError(
                f"An image is a {type(bad).__name__}, not a (channels, height, width) tensor; give the collator an "
                "image_processor (images -> pixel_values tensor), e.g. the model's AutoImageProcessor."
            )
        return torch.stack(images)
