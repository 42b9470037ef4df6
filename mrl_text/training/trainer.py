"""Training Matryoshka models with the Hugging Face `Trainer`.

`MatryoshkaTrainingArguments` adds the loss and its options to `TrainingArguments`; `MatryoshkaTrainer` tokenizes
the dataset's text columns (`MatryoshkaDataCollator`), runs the model once per text column per step and hands the
full-size embeddings and the labels to the loss, `loss(embeddings, labels)` (`mrl_text.losses.matryoshka`): by default
`MatryoshkaLoss.from_config(model.config, base_loss)`, so the sizes and their weights come only from the model's
config. Following transformers, a model that computes its own loss from `labels` (`MatryoshkaForSequenceClassification`
and its Matryoshka cross-entropy) is trained on that loss, and its logits reach `compute_metrics`
(`classification_compute_metrics`). A distillation teacher belongs to its loss (`DistillMSELoss(teacher=...)`).
Checkpoints are full `MatryoshkaModel` folders (weights, config, modeling code, tokenizer), so `from_pretrained`
loads any of them and `resume_from_checkpoint` continues exactly where a run stopped. `metrics_for_trainer` turns
evaluator results into log keys.

Dataset layouts (column names are free except the label column, which is `label`, `labels` or `score`):

| loss | text columns | label column |
|---|---|---|
| `infonce` | anchor, positive[, hard negative, ...] | none |
| `cosent` | sentence1, sentence2 | score (any scale; only the order matters) |
| `cross_entropy` | text | label (class id 0..num_labels-1) |
| `distill_mse` | text | none (the `teacher` embeds the text) or the teacher's embeddings |
"""

import inspect
import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from .collator import (  # noqa: F401
    LABEL_COLUMNS,
    TEACHER_PREFIX,
    TOKENIZER_OUTPUTS,
    MatryoshkaDataCollator,
    split_batch,
)
from ..evaluation import evaluate as evaluate_model
from ..losses.matryoshka import LOSSES, MatryoshkaLoss, get_loss
from ..losses.depth import MatryoshkaDepthLoss
from ..models.modeling_matryoshka import MatryoshkaModel, MatryoshkaPreTrainedModel
from ..models.modeling_matryoshka_classification import MatryoshkaForSequenceClassification
from .optimization import DEFAULT_HEAD_LEARNING_RATE, build_optimizer
from .schedule import MatryoshkaScheduleCallback, check_fraction, smaller_sizes_scale  # noqa: F401
from .metrics import classification_compute_metrics, metrics_for_trainer

logger = logging.getLogger(__name__)

# Model outputs too large or too ragged to gather for compute_metrics (token states differ in length per batch).
UNGATHERED_OUTPUTS = ("loss", "last_hidden_state", "hidden_states", "attentions")


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
        full_size_only_fraction (`float`, defaults to 0.0): train only the full size for this share of the steps,
            then every size; 0.5 kept plain training's full size in a validation study.
        smaller_sizes_warmup_fraction (`float`, defaults to 0.0): the weights of the sizes below the full size rise
            linearly from 0 to their values over this share of the steps; 1.0 with weight 4 on the
            full size cost 0.4 at full size against plain training (equal weights: 2.8) in a validation study.
        gather_across_devices (`bool`, defaults to `True`): under DDP, in-batch negatives span the global batch.
        max_seq_length (`int`, defaults to 128): the collator truncates texts to this many tokens.
        matryoshka_depth (`bool`): 2D Matryoshka, [`MatryoshkaDepthLoss`] over the model's `config.matryoshka_layers`
            (`n_layers_per_step`, `layer_weights`, `depth_alignment_weight`, `depth_alignment`), from the same encoder
            pass.
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
    full_size_only_fraction: float = field(
        default=0.0, metadata={"help": "Share of the steps (from the start) that train only the full size."}
    )
    smaller_sizes_warmup_fraction: float = field(
        default=0.0, metadata={"help": "Share of the steps over which the smaller sizes' weights rise from 0."}
    )
    gather_across_devices: bool = field(
        default=True, metadata={"help": "Under DDP, gather embeddings so in-batch negatives span the global batch."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longest tokenized input (tokens)."})
    matryoshka_depth: bool = field(default=False, metadata={"help": "2D Matryoshka: train earlier depths too."})
    n_layers_per_step: int = field(default=-1, metadata={"help": "matryoshka_depth: earlier depths per step (-1: all)."})
    layer_weights: list[float] | None = field(default=None, metadata={"help": "One weight per matryoshka_layers."})
    depth_alignment_weight: float = field(default=1.0, metadata={"help": "Alignment to the final layer's embedding."})
    depth_alignment: str = field(default="similarity_kl", metadata={"help": "matryoshka_depth: similarity_kl or cosine."})
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": f"Learning rate of the parameters outside the encoder (heads, projection). Default: "
                  f"{DEFAULT_HEAD_LEARNING_RATE} for classification models, learning_rate for embedding models."},
    )
    scale_head_learning_rate_by_size: bool = field(
        default=True, metadata={"help": "The nested head of size d learns at head_learning_rate * sqrt(full / d)."}
    )
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
        for name in ("full_size_only_fraction", "smaller_sizes_warmup_fraction"):
            check_fraction(name, getattr(self, name))
        if self.max_seq_length <= 0:
            raise ValueError(f"max_seq_length={self.max_seq_length} must be a positive number of tokens.")
        if self.dataloader_pin_memory and self.device.type == "cpu":
            self.dataloader_pin_memory = False  # pinned memory only speeds copies to an accelerator; torch warns on CPU


class MatryoshkaTrainer(Trainer):
    r"""
    A [`~transformers.Trainer`] for Matryoshka models: one model pass per text column per step, the full-size
    embeddings and the labels handed to the loss, which applies itself to every nested prefix ([`MatryoshkaLoss`],
    sizes and weights from `model.config`). A model that computes its own loss from `labels` (transformers'
    convention: [`MatryoshkaForSequenceClassification`]'s Matryoshka cross-entropy) is trained on that loss.

    Args:
        model ([`MatryoshkaModel`] or [`MatryoshkaForSequenceClassification`]): the model to train (with a tokenizer;
            `MatryoshkaModel.from_encoder` loads one).
        args ([`MatryoshkaTrainingArguments`]): the training arguments, loss included.
        train_dataset (`datasets.Dataset`): rows in the layout the loss reads (see the module docstring).
        eval_dataset (`datasets.Dataset`, *optional*): same layout; evaluation reports its loss, and `compute_metrics`
            (e.g. `classification_compute_metrics(dims)`) gets the model's outputs and the labels.
        evaluators (`list`, *optional*): `mrl_text.evaluation` evaluators (`STSEvaluator`, `RetrievalEvaluator`,
            `ClassificationEvaluator`, with distinct names); evaluation logs every metric at every size of the
            model's config, e.g. `eval_stsb_spearman_64`.
        teacher (*optional*): for `loss="distill_mse"`, the teacher handed to `DistillMSELoss(teacher=...)`: a model
            whose output has `full_embeddings` (e.g. a `MatryoshkaModel`); frozen and truncated like the student.
        loss_fn (*optional*): a ready loss to use instead of the one `args.loss` names, called as
            `loss_fn(list_of_full_size_embeddings, labels)` (e.g. a `MatryoshkaLoss` with a custom base loss).
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
        if not isinstance(model, MatryoshkaPreTrainedModel):
            raise ValueError(
                f"MatryoshkaTrainer trains Matryoshka models; got {type(model).__name__}. Wrap the encoder first: "
                "mrl_text.MatryoshkaModel.from_encoder(name_or_path, matryoshka_dimensions=[...])."
            )
        if args.remove_unused_columns:
            logger.warning("remove_unused_columns=True would drop the text columns; MatryoshkaTrainer sets it to False.")
            args.remove_unused_columns = False
        tokenizer = kwargs.pop("processing_class", None) or model.tokenizer
        if tokenizer is None:
            raise ValueError(
                "The model has no tokenizer: build it with MatryoshkaModel.from_encoder(...) or set "
                "`model.tokenizer = AutoTokenizer.from_pretrained(...)` (or pass processing_class=...)."
            )
        if loss_fn is None:
            loss_fn, loss_name = self.build_loss(model, args, teacher=teacher), f"loss={args.loss!r}"
        elif teacher is not None:
            raise ValueError("With loss_fn=..., give the teacher to its loss (DistillMSELoss(teacher=...)), not here.")
        else:
            loss_name = type(loss_fn).__name__
        if not getattr(loss_fn, "sums_over_sizes", False) and not isinstance(model, MatryoshkaModel):
            raise ValueError(
                f"{loss_name} trains embeddings; use a MatryoshkaModel (got {type(model).__name__}), or "
                "loss='cross_entropy' for a classification model."
            )
        self.evaluators = list(evaluators or [])
        for dataset, name in ((train_dataset, "train_dataset"), (eval_dataset, "eval_dataset")):
            self._check_columns(dataset, name, loss_fn, loss_name)
        if data_collator is None:
            teacher_tokenizer = getattr(loss_fn, "teacher_tokenizer", None)
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
        self.loss_fn = loss_fn
        if isinstance(loss_fn, nn.Module) and self.place_model_on_device:
            loss_fn.to(args.device)  # with the models a loss holds (a distillation teacher)
        # The model card is filled as training goes: loss, data, arguments, results at every size, versions, time.
        from ..cards.card_data import MatryoshkaModelCardCallback

        self.add_callback(MatryoshkaModelCardCallback(self))

    def create_optimizer(self, model=None):
        """AdamW with the encoder at `learning_rate` and the heads at `head_learning_rate` (mrl_text.training.optimization)."""
        model = self.model if model is None else model
        head_lr = self.args.head_learning_rate
        if head_lr is None and isinstance(model, MatryoshkaForSequenceClassification):
            head_lr = DEFAULT_HEAD_LEARNING_RATE
        if self.optimizer is None and head_lr is not None:
            self.optimizer = build_optimizer(
                model, self.args.learning_rate, head_lr, self.args.weight_decay,
                self.args.scale_head_learning_rate_by_size, (self.args.adam_beta1, self.args.adam_beta2),
                self.args.adam_epsilon,
            )
        return super().create_optimizer(model)

    @staticmethod
    def _check_columns(dataset, name, loss, loss_name):
        """A clear error when a dataset does not have the columns the loss reads (as the loss declares them)."""
        columns = getattr(dataset, "column_names", None)
        if columns is None:  # an iterable or torch dataset: the collator checks each batch
            return
        if dataset is not None and hasattr(dataset, "__len__") and len(dataset) == 0:
            raise ValueError(f"{name} has no rows.")
        minimum, maximum = getattr(loss, "min_text_columns", 1), getattr(loss, "max_text_columns", None)
        needs_labels = getattr(loss, "needs_labels", None)  # None: the loss does not say
        texts = [c for c in columns if c not in LABEL_COLUMNS]
        labels = [c for c in columns if c in LABEL_COLUMNS]
        problems = []
        if len(texts) < minimum:
            problems.append(f"at least {minimum} text column(s)")
        if maximum is not None and len(texts) > maximum:
            problems.append(f"at most {maximum} text column(s)")
        if needs_labels is True and not labels:
            problems.append(f"a label column named one of {', '.join(LABEL_COLUMNS)}")
        if needs_labels is False and labels:
            problems.append(f"no label column (found {labels})")
        if problems:
            raise ValueError(
                f"{name} has columns {columns}, but {loss_name} needs {' and '.join(problems)}. Select and rename "
                "columns (dataset.select_columns / rename_column) or load the data with mrl_text.data loaders."
            )

    def build_loss(self, model, args, teacher=None):
        """The loss `args.loss` names, built with the options of `args` it takes (and the model or teacher it holds),
        wrapped in `MatryoshkaLoss` with the sizes and weights of `model.config` unless it weights the sizes itself."""
        available = {
            "scale": args.loss_scale,
            "symmetric": args.symmetric_loss,
            "gather_across_devices": args.gather_across_devices,
            "model": model,
            "teacher": teacher,
        }
        accepted = inspect.signature(LOSSES[args.loss].__init__).parameters
        if teacher is not None and "teacher" not in accepted:
            raise ValueError(f"teacher= is for distillation (loss='distill_mse'); loss={args.loss!r} takes none.")
        base = get_loss(args.loss, **{key: value for key, value in available.items() if key in accepted})
        if not getattr(base, "sums_over_sizes", False):
            base = MatryoshkaLoss.from_config(
                model.config, base, n_dims_per_step=args.n_dims_per_step, keep_full_dim=args.keep_full_dim
            )
        return MatryoshkaDepthLoss.from_training_args(model.config, base, args) if args.matryoshka_depth else base

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One model pass per text column, then the loss: the one the model computed from `labels` when it takes
        them, else `self.loss_fn(full-size embeddings, labels)`. With `return_outputs`, the outputs per column."""
        columns, teacher_columns, labels = split_batch(inputs)
        compute_labels = getattr(self.loss_fn, "compute_labels", None)  # targets made from the batch (a teacher's)
        if compute_labels is not None:
            labels = compute_labels(teacher_columns or columns, labels)
        label_inputs = self.model_label_inputs(labels)
        # The earlier depths a depth loss trains this step come from the same pass (pooled hidden states).
        layers = self.loss_fn.layers_for_step() if hasattr(self.loss_fn, "layers_for_step") else []
        label_inputs.update({"output_layer_embeddings": layers} if layers else {})
        self.apply_size_schedule(model)  # before the pass: a model that takes labels computes its loss in it
        # Every size is a slice of these full-size embeddings: the number of sizes adds no model pass.
        outputs = [model(**features, **label_inputs) for features in columns.values()]
        loss = outputs[0].get("loss")
        if loss is None:
            embeddings = [output.full_embeddings for output in outputs]
            embeddings += [output.layer_embeddings[k] for k in layers for output in outputs]
            loss = self.loss_fn(embeddings, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The loss is {loss.item()} at step {self.state.global_step + 1}; training stopped. Lower the "
                "learning rate, use bf16 instead of fp16, or check the data of this step."
            )
        return (loss, outputs) if return_outputs else loss

    def apply_size_schedule(self, model):
        """This step's `full_size_only_fraction` / `smaller_sizes_warmup_fraction` on the loss, or on a model that
        computes its own (`smaller_sizes_scale` of the classification heads' loss)."""
        scale = smaller_sizes_scale(self.state.global_step, self.state.max_steps,
                                    self.args.smaller_sizes_warmup_fraction, self.args.full_size_only_fraction)
        if hasattr(self.loss_fn, "full_size_only"):  # MatryoshkaLoss skips the smaller sizes' work while they weigh 0
            self.loss_fn.full_size_only, self.loss_fn.smaller_sizes_scale = scale == 0.0, scale
        model = self.accelerator.unwrap_model(model)
        if hasattr(model, "smaller_sizes_scale"):
            model.smaller_sizes_scale = scale

    def model_label_inputs(self, labels):
        """`{"labels": labels}` for a model whose forward takes them (transformers' `label_names`), which then computes
        its own loss; class ids read as floats (a csv's `1.0`) become integers."""
        if labels is None or "labels" not in self.label_names:
            return {}
        config = self.model.config
        if labels.is_floating_point() and labels.dim() == 1 and config.num_labels > 1 and config.problem_type is None:
            if not torch.equal(labels, labels.round()):
                raise ValueError(f"Class labels must be integers 0..{config.num_labels - 1}; got {labels.tolist()}.")
            labels = labels.long()
        return {"labels": labels}

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss on `eval_dataset` and, for `compute_metrics`, the model's outputs and the labels: for a classifier
        `(logits, matryoshka_logits, embeddings)`, what `classification_compute_metrics` reads (one such tuple per
        text column when there are several)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        skipped = set(ignore_keys or ()) | set(UNGATHERED_OUTPUTS)
        per_column = [tuple(value for key, value in output.items() if key not in skipped) for output in outputs]
        per_column = [values[0] if len(values) == 1 else values for values in per_column]
        predictions = per_column[0] if len(per_column) == 1 else tuple(per_column)
        return loss.detach(), predictions, inputs.get("labels")

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


__all__ = [
    "MatryoshkaDataCollator",
    "MatryoshkaTrainer",
    "MatryoshkaTrainingArguments",
    "classification_compute_metrics",
    "metrics_for_trainer",
    "split_batch",
]
