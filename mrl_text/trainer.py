"""Training Matryoshka models with the Hugging Face `Trainer`.

`MatryoshkaTrainingArguments` adds the loss and its options to `TrainingArguments`; `MatryoshkaTrainer` tokenizes
the dataset's text columns (`MatryoshkaDataCollator`), runs the encoder once per text column per step and applies
`MatryoshkaLoss.from_config(model.config, base_loss)`: the sizes and their weights come only from the model's config.
Checkpoints are full `MatryoshkaModel` folders (weights, config, modeling code, tokenizer), so `from_pretrained`
loads any of them and `resume_from_checkpoint` continues exactly where a run stopped.

Dataset layouts (column names are free except the label column, which is `label`, `labels` or `score`):

| loss | text columns | label column |
|---|---|---|
| `infonce` | anchor, positive[, hard negative, ...] | none |
| `cosent` | sentence1, sentence2 | score (any scale; only the order matters) |
| `cross_entropy` | text | label (class id 0..num_labels-1) |
| `distill_mse` | text | none (the `teacher` embeds the text) or the teacher's embeddings |
"""

import logging
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from .evaluation import evaluate as evaluate_model
from .evaluation import metrics_for_trainer
from .losses import LOSSES, MatryoshkaLoss, get_loss
from .modeling_matryoshka import MatryoshkaForSequenceClassification, MatryoshkaModel, MatryoshkaPreTrainedModel

logger = logging.getLogger(__name__)

# Columns that hold the target rather than text, in every layout.
LABEL_COLUMNS = ("label", "labels", "score")
# Tokenizer outputs the collator forwards to the model; a batch key is "<column>.<one of these>".
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
TEACHER_PREFIX = "teacher:"


@dataclass
class MatryoshkaTrainingArguments(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] plus the Matryoshka loss and its options. The sizes and their weights are
    not here: they come from the model's config (`matryoshka_dimensions`, `matryoshka_weights`).

    Args:
        loss (`str`, defaults to `"infonce"`): base loss applied at every size: `"infonce"` (pairs/triplets),
            `"cosent"` (scored pairs), `"cross_entropy"` (labelled text, nested heads) or `"distill_mse"` (a teacher).
        loss_scale (`float`, defaults to 20.0): inverse temperature of `infonce` and `cosent`.
        symmetric_loss (`bool`): `infonce` also scores positive -> anchor.
        n_dims_per_step (`int`, *optional*): train a random subset of this many sizes per step (sorted).
        keep_full_dim (`bool`, defaults to `True`): with `n_dims_per_step`, the full size is always trained.
        gather_across_devices (`bool`, defaults to `True`): under DDP, in-batch negatives span the global batch.
        max_seq_length (`int`, defaults to 128): the collator truncates texts to this many tokens.
    """

    loss: str = field(
        default="infonce", metadata={"help": f"Base loss applied at every size: one of {', '.join(LOSSES)}."}
    )
    loss_scale: float = field(default=20.0, metadata={"help": "Inverse temperature of infonce/cosent."})
    symmetric_loss: bool = field(default=False, metadata={"help": "infonce: add the positive->anchor term."})
    n_dims_per_step: int | None = field(
        default=None, metadata={"help": "Train a random (sorted) subset of this many sizes per step."}
    )
    keep_full_dim: bool = field(
        default=True, metadata={"help": "With n_dims_per_step, always train the full size."}
    )
    gather_across_devices: bool = field(
        default=True, metadata={"help": "Under DDP, gather embeddings so in-batch negatives span the global batch."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longest tokenized input (tokens)."})
    # Every parameter of a Matryoshka model is used each step (the encoder is built without its pooler), so DDP
    # can skip the per-step search for unused parameters that Trainer would otherwise turn on.
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Set True only for encoders with parameters a forward pass leaves unused."}
    )
    # The text columns must reach the collator: the model's forward signature names none of them.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator reads the dataset's text columns."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}; choose one of {', '.join(sorted(LOSSES))}.")
        if self.max_seq_length <= 0:
            raise ValueError(f"max_seq_length={self.max_seq_length} must be a positive number of tokens.")


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


class MatryoshkaTrainer(Trainer):
    r"""
    A [`~transformers.Trainer`] for Matryoshka models: one encoder pass per text column per step, the base loss
    applied to every nested prefix by [`MatryoshkaLoss`] with the sizes and weights of `model.config`.

    Args:
        model ([`MatryoshkaModel`] or [`MatryoshkaForSequenceClassification`]): the model to train (with a tokenizer;
            `MatryoshkaModel.from_encoder` loads one).
        args ([`MatryoshkaTrainingArguments`]): the training arguments, loss included.
        train_dataset (`datasets.Dataset`): rows in the layout the loss reads (see the module docstring).
        eval_dataset (`datasets.Dataset`, *optional*): same layout; evaluation reports its loss.
        evaluators (`list`, *optional*): `mrl_text.evaluation` evaluators (`STSEvaluator`, `RetrievalEvaluator`,
            `ClassificationEvaluator`, with distinct names); evaluation logs every metric at every size of the
            model's config, e.g. `eval_stsb_spearman_64`.
        teacher (*optional*): for `loss="distill_mse"`, a model whose output has `full_embeddings` (e.g. a
            `MatryoshkaModel`); it is frozen and truncated to every size like the student.
        loss_fn (*optional*): a ready loss to use instead of the one `args.loss` names, called as
            `loss_fn(list_of_full_size_embeddings, **kwargs)` (e.g. a `MatryoshkaLoss` with a custom base loss).
        data_collator (*optional*): defaults to [`MatryoshkaDataCollator`] over the model's tokenizer.
        Other keyword arguments go to `Trainer`.

    Example:

    ```python
    >>> model = MatryoshkaModel.from_encoder("bert-base-uncased", matryoshka_dimensions=[768, 256, 64])
    >>> args = MatryoshkaTrainingArguments(output_dir="out", loss="infonce", per_device_train_batch_size=64)
    >>> MatryoshkaTrainer(model=model, args=args, train_dataset=triplets).train()
    ```
    """

    def __init__(
        self,
        model=None,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        evaluators=None,
        teacher=None,
        loss_fn=None,
        data_collator=None,
        **kwargs,
    ):
        if args is None:
            args = MatryoshkaTrainingArguments(output_dir="outputs/matryoshka")
        elif not isinstance(args, MatryoshkaTrainingArguments):
            raise ValueError(
                f"args is a {type(args).__name__}; use MatryoshkaTrainingArguments (it carries the loss options)."
            )
        self._check_model(model, args.loss)
        if args.remove_unused_columns:
            logger.warning("remove_unused_columns=True would drop the text columns; MatryoshkaTrainer sets it to False.")
            args.remove_unused_columns = False
        tokenizer = kwargs.pop("processing_class", None) or model.tokenizer
        if tokenizer is None:
            raise ValueError(
                "The model has no tokenizer: build it with MatryoshkaModel.from_encoder(...) or set "
                "`model.tokenizer = AutoTokenizer.from_pretrained(...)` (or pass processing_class=...)."
            )
        if args.loss == "distill_mse" and teacher is None:
            logger.info("loss='distill_mse' without a teacher: the label column must hold the teacher's embeddings.")
        if teacher is not None:
            teacher = teacher.to(args.device).eval().requires_grad_(False)
        self.teacher = teacher
        self.evaluators = list(evaluators or [])
        for dataset, name in ((train_dataset, "train_dataset"), (eval_dataset, "eval_dataset")):
            self._check_columns(dataset, name, args.loss, teacher)
        if data_collator is None:
            teacher_tokenizer = getattr(teacher, "tokenizer", None)
            data_collator = MatryoshkaDataCollator(
                tokenizer,
                max_seq_length=args.max_seq_length,
                teacher_tokenizer=None if teacher_tokenizer is tokenizer else teacher_tokenizer,
            )
        # Trainer refuses eval_strategy without an eval_dataset; evaluators alone are enough here.
        eval_strategy = args.eval_strategy
        if self.evaluators and eval_dataset is None:
            args.eval_strategy = "no"
        try:
            super().__init__(
                model=model,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                data_collator=data_collator,
                processing_class=tokenizer,
                **kwargs,
            )
        finally:
            args.eval_strategy = eval_strategy
        # compute_loss returns a per-batch mean: Trainer divides it by the gradient accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_fn = loss_fn if loss_fn is not None else self.build_loss(model, args)
        # The model card is filled as training goes: loss, data, arguments, results at every size, versions, time.
        from .model_card_data import MatryoshkaModelCardCallback

        self.add_callback(MatryoshkaModelCardCallback(self))

    @staticmethod
    def _check_model(model, loss):
        if not isinstance(model, MatryoshkaPreTrainedModel):
            raise ValueError(
                f"MatryoshkaTrainer trains Matryoshka models; got {type(model).__name__}. Wrap the encoder first: "
                "mrl_text.MatryoshkaModel.from_encoder(name_or_path, matryoshka_dimensions=[...])."
            )
        if loss == "cross_entropy" and not isinstance(model, MatryoshkaForSequenceClassification):
            raise ValueError(
                f"loss='cross_entropy' trains nested classification heads; got {type(model).__name__}. Use "
                "mrl_text.MatryoshkaForSequenceClassification (config with num_labels)."
            )
        if loss != "cross_entropy" and not isinstance(model, MatryoshkaModel):
            raise ValueError(
                f"loss={loss!r} trains embeddings; use a MatryoshkaModel (got {type(model).__name__}), or "
                "loss='cross_entropy' for a classification model."
            )

    @staticmethod
    def _check_columns(dataset, name, loss, teacher):
        """A clear error when a dataset does not have the columns the loss reads."""
        columns = getattr(dataset, "column_names", None)
        if columns is None:  # an iterable or torch dataset: the collator checks each batch
            return
        if dataset is not None and hasattr(dataset, "__len__") and len(dataset) == 0:
            raise ValueError(f"{name} has no rows.")
        loss_class = LOSSES[loss]
        texts = [c for c in columns if c not in LABEL_COLUMNS]
        labels = [c for c in columns if c in LABEL_COLUMNS]
        needs_labels = loss_class.needs_labels or (loss == "distill_mse" and teacher is None)
        problems = []
        if len(texts) < loss_class.min_text_columns:
            problems.append(f"at least {loss_class.min_text_columns} text column(s)")
        if loss_class.max_text_columns is not None and len(texts) > loss_class.max_text_columns:
            problems.append(f"at most {loss_class.max_text_columns} text column(s)")
        if needs_labels and not labels:
            problems.append(f"a label column named one of {', '.join(LABEL_COLUMNS)}")
        if not needs_labels and labels:
            problems.append(f"no label column (found {labels})")
        if problems:
            raise ValueError(
                f"{name} has columns {columns}, but loss={loss!r} needs {' and '.join(problems)}. Select and rename "
                "columns (dataset.select_columns / rename_column) or load the data with mrl_text.data loaders."
            )

    def build_loss(self, model, args):
        """`MatryoshkaLoss` around the base loss `args.loss` names, sizes and weights from `model.config`."""
        options = {
            "infonce": {
                "scale": args.loss_scale,
                "symmetric": args.symmetric_loss,
                "gather_across_devices": args.gather_across_devices,
            },
            "cosent": {"scale": args.loss_scale},
        }.get(args.loss, {})
        base = get_loss(args.loss, **options)
        if args.loss == "cross_entropy":  # the model's nested heads weight the sizes themselves
            return base
        return MatryoshkaLoss.from_config(
            model.config, base, n_dims_per_step=args.n_dims_per_step, keep_full_dim=args.keep_full_dim
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        columns, teacher_columns, labels = split_batch(inputs)
        if self.args.loss == "cross_entropy":
            (features,) = columns.values()
            outputs = model(**features)
            if labels.is_floating_point() and self.model.num_labels > 1 and self.model.config.problem_type is None:
                if not torch.equal(labels, labels.round()):
                    raise ValueError(f"Class labels must be integers 0..{self.model.num_labels - 1}; got {labels.tolist()}.")
                labels = labels.long()  # e.g. ids read from a csv as 0.0, 1.0
            loss = self.loss_fn(model, outputs.matryoshka_logits, labels)
        else:
            # One encoder pass per text column; every size is a slice of these full-size embeddings.
            outputs = [model(**features) for features in columns.values()]
            embeddings = [output.full_embeddings for output in outputs]
            kwargs = {}
            if self.args.loss == "distill_mse":
                embeddings.append(self._teacher_embeddings(teacher_columns or columns, labels))
            elif labels is not None:
                kwargs["labels"] = labels
            loss = self.loss_fn(embeddings, **kwargs)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The loss is {loss.item()} at step {self.state.global_step + 1}; training stopped. Lower the "
                "learning rate, use bf16 instead of fp16, or check the data of this step."
            )
        return (loss, outputs) if return_outputs else loss

    def _teacher_embeddings(self, teacher_columns, labels):
        if self.teacher is None:
            if labels is None or labels.dim() != 2:
                raise ValueError(
                    "loss='distill_mse' needs a teacher: pass teacher=... to MatryoshkaTrainer, or put the teacher's "
                    "embeddings (one vector per row) in the 'label' column."
                )
            return labels.float()
        (features,) = teacher_columns.values()
        with torch.no_grad():
            return self.teacher(**features).full_embeddings

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation reports the training loss on `eval_dataset` (no predictions to gather)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluator_metrics(self, metric_key_prefix="eval"):
        """Every evaluator's metrics at every size of the model's config, e.g. `eval_stsb_spearman_64`."""
        results = evaluate_model(
            self.accelerator.unwrap_model(self.model),
            self.evaluators,
            batch_size=self.args.per_device_eval_batch_size,
            max_length=self.args.max_seq_length,
        )
        return metrics_for_trainer(results, prefix=metric_key_prefix)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Loss on `eval_dataset` (when there is one) and the evaluators' metrics, logged and reported together."""
        if eval_dataset is not None or self.eval_dataset is not None or not self.evaluators:
            # Trainer's loop; evaluation_loop adds the evaluators' metrics, so callbacks see one set of metrics.
            self._evaluator_prefix = metric_key_prefix
            try:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            finally:
                self._evaluator_prefix = None
        metrics = self.evaluator_metrics(metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        if self.evaluators and getattr(self, "_evaluator_prefix", None):
            output.metrics.update(self.evaluator_metrics(self._evaluator_prefix))
        return output


__all__ = ["MatryoshkaDataCollator", "MatryoshkaTrainer", "MatryoshkaTrainingArguments", "split_batch"]
