"""Training Matryoshka models with the Hugging Face `Trainer`.

`MatryoshkaTrainer` takes a loss object, as sentence-transformers' trainer does: `MatryoshkaTrainer(model=...,
args=..., train_dataset=..., loss=MatryoshkaLoss.from_config(model.config, InfoNCELoss()))`.
It tokenizes the dataset's text columns (`MatryoshkaDataCollator`), runs the model once per text column per step and
hands the full-size embeddings and the labels to the loss, `loss(embeddings, labels)` (`mrl_text.losses`), which
applies itself to every nested size. Without `loss=` it builds the default from the model: InfoNCE at every size of
the model's config for a `MatryoshkaModel`; for a model that computes its own loss from `labels`
(`MatryoshkaForSequenceClassification`, transformers' convention) that loss, `MatryoshkaCrossEntropyLoss`, whose
logits reach `compute_metrics` (`classification_compute_metrics`). The options of a loss live on the loss (a
distillation teacher on `DistillMSELoss(teacher=...)`), the size schedule on `SizeSchedule`
(`size_schedule=`), and `MatryoshkaTrainingArguments` holds only what is about training. Checkpoints are full
`MatryoshkaModel` folders (weights, config, modeling code, tokenizer), so `from_pretrained` loads any of them and
`resume_from_checkpoint` continues exactly where a run stopped. `metrics_for_trainer` turns evaluator results into
log keys.

Dataset layouts (column names are free except the label column, which is `label`, `labels` or `score`):

| base loss | text columns | label column |
|---|---|---|
| `InfoNCELoss` | anchor, positive[, hard negative, ...] | none |
| `CoSENTLoss` | sentence1, sentence2 | score (any scale; only the order matters) |
| `MatryoshkaCrossEntropyLoss` | text | label (class id 0..num_labels-1) |
| `DistillMSELoss` | text | none (the loss's `teacher` embeds the text) or the teacher's embeddings |
"""

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from ..evaluation import evaluate as evaluate_model
from ..losses import ImageTextInfoNCELoss, InfoNCELoss, MatryoshkaCrossEntropyLoss, MatryoshkaLoss
from ..losses.cached import cached_loss
from ..models.modeling_matryoshka import MatryoshkaModel, MatryoshkaPreTrainedModel
from ..models.modeling_matryoshka_classification import MatryoshkaForSequenceClassification
from ..models.modeling_matryoshka_dual_encoder import MatryoshkaDualEncoder
from ..models.modeling_matryoshka_mlm import MatryoshkaForMaskedLM
from .collator import (  # noqa: F401
    LABEL_COLUMNS,
    TEACHER_PREFIX,
    TOKENIZER_OUTPUTS,
    ImageTextDataCollator,
    MatryoshkaDataCollator,
    split_batch,
)
from .metrics import classification_compute_metrics, metrics_for_trainer
from .optimization import DEFAULT_HEAD_LEARNING_RATE, build_optimizer
from .schedule import SizeSchedule
from .sharding import full_state_dict, is_fully_sharded, own_class

logger = logging.getLogger(__name__)

# Model outputs too large or too ragged to gather for compute_metrics (token states differ in length per batch).
UNGATHERED_OUTPUTS = ("loss", "full_size_loss", "last_hidden_state", "hidden_states", "attentions")

# Options that used to be training arguments, and where each lives now.
MOVED_ARGUMENTS = {
    "loss": "MatryoshkaTrainer(loss=MatryoshkaLoss.from_config(model.config, InfoNCELoss()))",
    "loss_scale": "InfoNCELoss(scale=...) / CoSENTLoss(scale=...)",
    "symmetric_loss": "InfoNCELoss(symmetric=True)",
    "gather_across_devices": "InfoNCELoss(gather_across_devices=...)",
    "n_dims_per_step": "MatryoshkaLoss(..., n_dims_per_step=...)",
    "keep_full_dim": "MatryoshkaLoss(..., keep_full_dim=...)",
    "full_size_only_fraction": "MatryoshkaTrainer(size_schedule=SizeSchedule(full_size_only_fraction=...))",
    "smaller_sizes_warmup_fraction": (
        "MatryoshkaTrainer(size_schedule=SizeSchedule(smaller_sizes_warmup_fraction=...))"
    ),
    "matryoshka_depth": "MatryoshkaTrainer(loss=MatryoshkaDepthLoss.from_config(model.config, matryoshka_loss))",
    "n_layers_per_step": "MatryoshkaDepthLoss(..., n_layers_per_step=...)",
    "layer_weights": "MatryoshkaDepthLoss(..., layer_weights=...)",
    "depth_alignment_weight": "MatryoshkaDepthLoss(..., alignment_weight=...)",
    "depth_alignment": "MatryoshkaDepthLoss(..., alignment=...)",
}


@dataclass
class MatryoshkaTrainingArguments(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] plus what Matryoshka training adds to the run itself: the collator's token
    limit and the heads' learning rate. The loss and its options are an object given to `MatryoshkaTrainer(loss=...)`,
    the size schedule a `SizeSchedule`; the sizes and their weights come from the model's config.

    Args:
        max_seq_length (`int`, defaults to 128): the collator truncates texts to this many tokens.
        head_learning_rate (`float`, *optional*): learning rate of the parameters outside the encoder (heads,
            projection). Default: `DEFAULT_HEAD_LEARNING_RATE` for classification models (freshly initialised heads
            need a far larger rate than a pretrained encoder), `learning_rate` for embedding models.
        scale_head_learning_rate_by_size (`bool`, defaults to `True`): the nested head of size d learns at
            `head_learning_rate * sqrt(full / d)`.
    """

    max_seq_length: int = field(default=128, metadata={"help": "Longest tokenized input (tokens)."})
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

    def __new__(cls, *args, **kwargs):
        # Before the dataclass's __init__, which would only say "unexpected keyword argument".
        moved = [name for name in kwargs if name in MOVED_ARGUMENTS]
        if moved:
            raise TypeError(
                f"MatryoshkaTrainingArguments no longer takes {', '.join(moved)}: loss options live on the loss "
                "objects and the size schedule is its own object. Use "
                + "; ".join(f"{name} -> {MOVED_ARGUMENTS[name]}" for name in moved) + "."
            )
        return super().__new__(cls)

    def __post_init__(self):
        super().__post_init__()
        if self.max_seq_length <= 0:
            raise ValueError(f"max_seq_length={self.max_seq_length} must be a positive number of tokens.")
        if self.dataloader_pin_memory and self.device.type == "cpu":
            # Pinned memory only speeds copies to an accelerator; torch warns about it on CPU.
            self.dataloader_pin_memory = False


class MatryoshkaTrainer(Trainer):
    r"""
    A [`~transformers.Trainer`] for Matryoshka models: one model pass per text column per step, the full-size
    embeddings and the labels handed to the loss, which applies itself to every nested prefix ([`MatryoshkaLoss`],
    sizes and weights from `model.config`). A model that computes its own loss from `labels` (transformers'
    convention: [`MatryoshkaForSequenceClassification`]'s Matryoshka cross-entropy) is trained on that loss. Two
    other batch kinds take one model pass each: a [`MatryoshkaDualEncoder`]'s images and captions
    ([`ImageTextDataCollator`]), and the batches of a collator you give to a model that scores them itself
    ([`MatryoshkaForMaskedLM`] with transformers' `DataCollatorForLanguageModeling`).

    Args:
        model ([`MatryoshkaPreTrainedModel`]): the model to train, a [`MatryoshkaModel`],
            [`MatryoshkaForSequenceClassification`], [`MatryoshkaDualEncoder`] or [`MatryoshkaForMaskedLM`] (with a
            tokenizer; `MatryoshkaModel.from_encoder` loads one).
        args ([`MatryoshkaTrainingArguments`]): the training arguments.
        train_dataset (`datasets.Dataset`): rows in the layout the loss reads (see the module docstring).
        eval_dataset (`datasets.Dataset`, *optional*): same layout; evaluation reports its loss, and `compute_metrics`
            (e.g. `classification_compute_metrics(dims)`) gets the model's outputs and the labels.
        loss (`nn.Module`, *optional*): the loss object, called as `loss(list_of_full_size_embeddings, labels)`:
            e.g. `MatryoshkaLoss.from_config(model.config, InfoNCELoss(scale=20.0))`, `MatryoshkaLoss(CoSENTLoss(),
            ...)`, `MatryoshkaLoss(DistillMSELoss(teacher=teacher), ...)`, a `MatryoshkaDepthLoss` around one of
            them. Default: `MatryoshkaLoss.from_config(model.config, InfoNCELoss())` for a `MatryoshkaModel`,
            `MatryoshkaCrossEntropyLoss(model)` for a `MatryoshkaForSequenceClassification`,
            `MatryoshkaLoss.from_config(model.config, ImageTextInfoNCELoss(model))` for a `MatryoshkaDualEncoder`
            (called as `loss([full_image_embeds, full_text_embeds])`), none for a `MatryoshkaForMaskedLM` (the loss
            it returns; a size schedule then drives the model).
        size_schedule ([`SizeSchedule`], *optional*): how much the smaller sizes weigh per step; the trainer hands it
            its loss to drive (the loss's `smaller_sizes_scale`).
        evaluators (`list`, *optional*): `mrl_text.evaluation` evaluators (`STSEvaluator`, `RetrievalEvaluator`,
            `ClassificationEvaluator`, with distinct names); evaluation logs every metric at every size of the
            model's config, e.g. `eval_stsb_spearman_64`.
        data_collator (*optional*): defaults to [`MatryoshkaDataCollator`] over the model's tokenizer
            ([`ImageTextDataCollator`] for a dual encoder: rows of `pixel_values` and `caption`); required for a
            `MatryoshkaForMaskedLM`.
        **kwargs: other keyword arguments go to `Trainer`.

    Example:

    ```python
    >>> model = MatryoshkaModel.from_encoder("bert-base-uncased", matryoshka_dimensions=[768, 256, 64])
    >>> args = MatryoshkaTrainingArguments(output_dir="out", per_device_train_batch_size=64)
    >>> loss = MatryoshkaLoss.from_config(model.config, InfoNCELoss(scale=20.0))
    >>> MatryoshkaTrainer(model=model, args=args, train_dataset=triplets, loss=loss,
    ...                   size_schedule=SizeSchedule(smaller_sizes_warmup_fraction=0.5)).train()
    ```
    """

    def __init__(
        self,
        model=None,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        loss=None,
        size_schedule=None,
        evaluators=None,
        data_collator=None,
        **kwargs,
    ):
        moved = {"loss_fn": "loss=...", "teacher": "loss=MatryoshkaLoss(DistillMSELoss(teacher=...), ...)"}
        for old, new in moved.items():
            if old in kwargs:
                raise TypeError(f"MatryoshkaTrainer takes no {old}=; use {new}.")
        if args is None:
            args = MatryoshkaTrainingArguments(output_dir="outputs/matryoshka")
        elif not isinstance(args, MatryoshkaTrainingArguments):
            raise ValueError(
                f"args is a {type(args).__name__}; use MatryoshkaTrainingArguments (it carries max_seq_length and the "
                "heads' learning rate)."
            )
        if not isinstance(model, MatryoshkaPreTrainedModel):
            raise ValueError(
                f"MatryoshkaTrainer trains Matryoshka models; got {type(model).__name__}. Wrap the encoder first: "
                "mrl_text.MatryoshkaModel.from_encoder(name_or_path, matryoshka_dimensions=[...])."
            )
        if isinstance(loss, str):
            raise ValueError(
                f"loss={loss!r} is a name; pass a loss object, e.g. loss=MatryoshkaLoss.from_config(model.config, "
                "InfoNCELoss()) (mrl_text.losses; get_loss(name, ...) builds a base loss from its name)."
            )
        if loss is not None and not callable(loss):
            raise ValueError(
                f"loss is a {type(loss).__name__}; pass a loss object called as loss(embeddings, labels)."
            )
        if size_schedule is not None and not isinstance(size_schedule, SizeSchedule):
            raise ValueError(
                f"size_schedule is a {type(size_schedule).__name__}; pass mrl_text.training.SizeSchedule(...)."
            )
        if args.remove_unused_columns:
            logger.warning("remove_unused_columns=True would drop the text columns; MatryoshkaTrainer sets it False.")
            args.remove_unused_columns = False
        tokenizer = kwargs.pop("processing_class", None) or model.tokenizer
        if tokenizer is None:
            raise ValueError(
                "The model has no tokenizer: build it with MatryoshkaModel.from_encoder(...) or set "
                "`model.tokenizer = AutoTokenizer.from_pretrained(...)` (or pass processing_class=...)."
            )
        loss = self.default_loss(model) if loss is None else loss
        wrapped = getattr(loss, "base_loss", None)
        loss_name = type(loss).__name__ + (f"({type(wrapped).__name__})" if wrapped is not None else "")
        self.batch_kind = self.batch_kind_of(model, loss)
        if getattr(loss, "mini_batch_size", None) and self.batch_kind != "columns":
            raise ValueError(
                f"{loss_name} has mini_batch_size={loss.mini_batch_size}, which caches text-column batches; "
                f"{type(model).__name__}'s batches are {self.batch_kind!r}. Leave mini_batch_size=None."
            )
        embedders = (MatryoshkaModel, MatryoshkaDualEncoder)
        if loss is not None and not getattr(loss, "sums_over_sizes", False) and not isinstance(model, embedders):
            raise ValueError(
                f"{loss_name} trains embeddings; use a MatryoshkaModel (got {type(model).__name__}), or "
                "MatryoshkaCrossEntropyLoss (the default) for a classification model."
            )
        self.evaluators = list(evaluators or [])
        for dataset, name in ((train_dataset, "train_dataset"), (eval_dataset, "eval_dataset")):
            if self.batch_kind == "columns":  # the text-column layout is MatryoshkaDataCollator's
                self._check_columns(dataset, name, loss, loss_name)
        if data_collator is None and self.batch_kind == "image_text":
            data_collator = ImageTextDataCollator(tokenizer, max_seq_length=args.max_seq_length)
        elif data_collator is None and self.batch_kind == "model_loss":
            raise ValueError(
                f"{type(model).__name__} computes its own loss from the batches of a collator you give: pass "
                "data_collator=... (for masked language modelling, DataCollatorForLanguageModeling(model.tokenizer))."
            )
        if data_collator is None:
            teacher_tokenizer = getattr(loss, "teacher_tokenizer", None)
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
        if is_fully_sharded(model) and not self.is_fsdp_enabled:
            self.own_sharding(args)
        # compute_loss returns a per-batch mean: Trainer divides it by the gradient accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._full_size_losses = []  # a model's own unweighted full-size loss per training step, until the next log
        self.loss = loss
        if isinstance(loss, nn.Module) and self.place_model_on_device:
            loss.to(args.device)  # with the models a loss holds (a distillation teacher)
        self.size_schedule = size_schedule
        if size_schedule is not None:
            # The loss carries the sizes' weights (MatryoshkaCrossEntropyLoss passes them on to the model's heads); a
            # model that computes its own loss without a loss object (MLM) is driven itself.
            self.add_callback(size_schedule if loss is None else size_schedule.drive(loss))
        # The model card is filled as training goes: loss, data, arguments, results at every size, versions, time.
        from ..cards.card_data import MatryoshkaModelCardCallback

        self.add_callback(MatryoshkaModelCardCallback(self))
        # A loss that learns something the model keeps (quantization-aware training's int8 ranges, inside
        # MatryoshkaLoss) offers a callback that writes it into the model's config.
        part = loss
        while part is not None:
            if hasattr(part, "trainer_callback"):
                self.add_callback(part.trainer_callback(model))
            part = getattr(part, "base_loss", None)

    def own_sharding(self, args):
        """Train a model sharded before the trainer (`fully_shard_model`, torch's FSDP2) as it is. Such a model reduces
        its own gradients (reduce-scatter of the shards), so accelerate must not wrap it in DDP, which it does on CPU
        processes; transformers' Trainer skips the wrap for a model that owns its placement and gradient reduction
        (its flag for models sharded at load time). Saving gathers the full weights (`_save`)."""
        if args.save_strategy != "no" and not args.save_only_model:
            raise ValueError(
                "The model is fully sharded (fully_shard_model): its checkpoints can hold the weights but not the "
                "sharded optimizer state. Set save_only_model=True (--save_only_model true) or save_strategy='no'."
            )
        self.is_distributed_loading_by_transformers = True

    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self):
        # Trainer's no_sync for a model sharded before training, while micro-batches accumulate. Its own version reads
        # the `config.distributed_config` of a model sharded at load time, which fully_shard_model's model has none of.
        if getattr(self.model.config, "distributed_config", None) is not None:
            with super()._defer_fsdp_gradient_reduction():
                yield
            return
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def _save(self, output_dir=None, state_dict=None):
        # A sharded model's weights are gathered by every process (a collective) and written by the main one.
        if state_dict is None and is_fully_sharded(self.model) and not self.is_fsdp_enabled:
            state_dict = full_state_dict(self.model)
            if not self.args.should_save:
                return
            with own_class(self.model):  # saved as mrl-text's class (its modeling file, auto_map), not FSDP2's
                return super()._save(output_dir, state_dict=state_dict)
        super()._save(output_dir, state_dict=state_dict)

    @staticmethod
    def default_loss(model):
        """The loss without `loss=`: a classification model's own Matryoshka cross-entropy, a dual encoder's image-text
        InfoNCE at every size, none for a masked language model (it computes its own loss from `labels`), else
        InfoNCE at every size of the model's config."""
        if isinstance(model, MatryoshkaForSequenceClassification):
            return MatryoshkaCrossEntropyLoss(model)
        if isinstance(model, MatryoshkaDualEncoder):
            return MatryoshkaLoss.from_config(model.config, ImageTextInfoNCELoss(model))
        if isinstance(model, MatryoshkaForMaskedLM):
            return None
        return MatryoshkaLoss.from_config(model.config, InfoNCELoss())

    def create_optimizer(self, model=None):
        """AdamW with the encoder at `learning_rate` and the heads at `head_learning_rate` (`build_optimizer`)."""
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

    @staticmethod
    def batch_kind_of(model, loss):
        """How a batch reaches the loss: `"columns"`, text columns from `MatryoshkaDataCollator` (one model pass per
        column); `"image_text"`, a dual encoder's `ImageTextDataCollator` batch (one pass over images and captions);
        `"model_loss"`, a batch from the caller's collator on which the model computes its own loss (no loss object:
        `MatryoshkaForMaskedLM` with `DataCollatorForLanguageModeling`)."""
        if isinstance(model, MatryoshkaDualEncoder):
            return "image_text"
        return "model_loss" if loss is None else "columns"

    def image_text_loss(self, model, inputs):
        """(loss, outputs) of a dual encoder's batch: one pass over the images and the batch's distinct captions, each
        image paired with its caption's row (`caption_index`), then `loss([full_image_embeds, full_text_embeds])`
        with both `(batch, embedding_size)`."""
        inputs = dict(inputs)
        caption_index = inputs.pop("caption_index", None)
        outputs = model(**inputs)
        text = outputs.full_text_embeds if caption_index is None else outputs.full_text_embeds[caption_index]
        return self.loss([outputs.full_image_embeds, text], None), outputs

    def model_loss(self, model, inputs):
        """(loss, outputs) of a batch the model scores itself (transformers' convention: `labels` in the batch)."""
        outputs = model(**inputs)
        if outputs.get("loss") is None:
            raise ValueError(
                f"{type(self.accelerator.unwrap_model(model)).__name__} returned no loss for a batch with keys "
                f"{sorted(inputs)}; its collator must give `labels` (e.g. DataCollatorForLanguageModeling)."
            )
        if model.training and outputs.get("full_size_loss") is not None:
            self._full_size_losses.append(outputs["full_size_loss"].detach())
        return outputs["loss"], outputs

    def log(self, logs, *args, **kwargs):
        """Trainer's log, with `full_size_loss` beside `loss` where the model returns it (MLM): the mean of the full
        size's unweighted loss since the last log. `loss` is the weighted sum over sizes and rises while a size
        schedule ramps the smaller sizes' weights in; the full-size loss shows whether training is going well."""
        if "loss" in logs and self._full_size_losses:
            items = list(logs.items())
            at = list(logs).index("loss") + 1
            full = round(torch.stack(self._full_size_losses).mean().item(), 4)
            logs = dict(items[:at] + [("full_size_loss", full)] + items[at:])
            self._full_size_losses = []
        return super().log(logs, *args, **kwargs)

    def checked_loss(self, loss):
        """`loss`, or a clear stop when it is not finite (a diverging run)."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The loss is {loss.item()} at step {self.state.global_step + 1}; training stopped. Lower the "
                "learning rate, use bf16 instead of fp16, or check the data of this step."
            )
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One model pass per text column, then the loss: the one the model computed from `labels` when it takes
        them, else `self.loss(full-size embeddings, labels)`. With `return_outputs`, the outputs per column. A dual
        encoder's batch and a batch the model scores itself take one pass each (`image_text_loss`, `model_loss`)."""
        if self.batch_kind != "columns":
            own_loss = self.image_text_loss if self.batch_kind == "image_text" else self.model_loss
            loss, output = own_loss(model, inputs)
            return (self.checked_loss(loss), [output]) if return_outputs else self.checked_loss(loss)
        columns, teacher_columns, labels = split_batch(inputs)
        compute_labels = getattr(self.loss, "compute_labels", None)  # targets made from the batch (a teacher's)
        if compute_labels is not None:
            labels = compute_labels(teacher_columns or columns, labels)
        label_inputs = self.model_label_inputs(labels)
        # The earlier depths a depth loss trains this step come from the same pass (pooled hidden states).
        layers = self.loss.layers_for_step() if hasattr(self.loss, "layers_for_step") else []
        label_inputs.update({"output_layer_embeddings": layers} if layers else {})
        mini_batch_size = getattr(self.loss, "mini_batch_size", None)
        cacheable = model.training and torch.is_grad_enabled() and not return_outputs and "labels" not in label_inputs
        if mini_batch_size and cacheable:  # GradCache; evaluation (no gradients) takes the plain path
            return self.checked_loss(self.cached_columns_loss(model, columns, labels, layers, mini_batch_size))
        # Every size is a slice of these full-size embeddings: the number of sizes adds no model pass.
        outputs = [model(**features, **label_inputs) for features in columns.values()]
        loss = outputs[0].get("loss")
        if loss is None:
            embeddings = [output.full_embeddings for output in outputs]
            embeddings += [output.layer_embeddings[k] for k in layers for output in outputs]
            loss = self.loss(embeddings, labels)
        loss = self.checked_loss(loss)
        return (loss, outputs) if return_outputs else loss

    def cached_columns_loss(self, model, columns, labels, layers, mini_batch_size):
        """The loss of a text-column batch trained in mini-batches of `mini_batch_size` rows with the full batch's
        gradient (GradCache, `mrl_text.losses.cached_loss`): two forward passes per mini-batch, one graph at a time;
        every size (and depth) still comes from one pass. DDP skips the gradient all-reduce until the last one."""
        layer_inputs = {"output_layer_embeddings": layers} if layers else {}

        def encode(features):
            output = model(**features, **layer_inputs)
            return [output.full_embeddings] + [output.layer_embeddings[k] for k in layers]

        no_sync = getattr(model, "no_sync", None)  # a DDP-wrapped model's
        return cached_loss(self.loss, encode, list(columns.values()), labels, mini_batch_size, no_sync=no_sync)

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
    "SizeSchedule",
    "classification_compute_metrics",
    "metrics_for_trainer",
    "split_batch",
]
