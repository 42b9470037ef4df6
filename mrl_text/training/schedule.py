"""The per-step size schedule of Matryoshka training: the full size alone for the first steps
(`full_size_only_fraction`) and the smaller sizes' loss weights ramped up from 0 (`smaller_sizes_warmup_fraction`).
`MatryoshkaTrainer` applies it to its loss (or to a model that computes its own); `MatryoshkaScheduleCallback` applies
it from a plain transformers `Trainer` (the MLM pretraining recipe)."""

from transformers import TrainerCallback


def smaller_sizes_scale(step, max_steps, warmup_fraction=0.0, full_size_only_fraction=0.0):
    """The factor on every smaller size's loss weight at 0-based optimizer `step` of `max_steps`: 0 for the first
    `full_size_only_fraction` of the steps (the full size alone), and rising linearly as (step + 1) / warmup steps to 1
    over the first `warmup_fraction` of them; 1 throughout when both are 0. The one schedule behind
    `MatryoshkaTrainingArguments`' two options, `MatryoshkaScheduleCallback` and the benchmarks' training loops."""
    if step < full_size_only_fraction * max_steps:
        return 0.0
    warmup = warmup_fraction * max_steps
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def check_fraction(name, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} must be between 0 and 1.")


class MatryoshkaScheduleCallback(TrainerCallback):
    """The size schedule for a plain transformers `Trainer` whose model computes its own Matryoshka loss
    (`MatryoshkaForMaskedLM` in recipes/pretrain_mlm.py, `MatryoshkaForSequenceClassification`): sets the model's
    `smaller_sizes_scale` before every optimizer step, as `MatryoshkaTrainer` does from its arguments.

    Example:

    ```python
    >>> trainer = Trainer(model=mlm_model, args=args, train_dataset=train, data_collator=collator)
    >>> trainer.add_callback(MatryoshkaScheduleCallback(smaller_sizes_warmup_fraction=1.0))
    ```
    """

    def __init__(self, smaller_sizes_warmup_fraction=0.0, full_size_only_fraction=0.0):
        check_fraction("smaller_sizes_warmup_fraction", smaller_sizes_warmup_fraction)
        check_fraction("full_size_only_fraction", full_size_only_fraction)
        self.smaller_sizes_warmup_fraction = smaller_sizes_warmup_fraction
        self.full_size_only_fraction = full_size_only_fraction

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not hasattr(model, "smaller_sizes_scale"):
            raise ValueError(f"MatryoshkaScheduleCallback schedules a Matryoshka model's own loss; "
                             f"{type(model).__name__} has no `smaller_sizes_scale`. Use MatryoshkaForMaskedLM or "
                             "MatryoshkaForSequenceClassification (or MatryoshkaTrainer, which schedules its loss).")

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.smaller_sizes_scale = smaller_sizes_scale(state.global_step, state.max_steps,
                                                        self.smaller_sizes_warmup_fraction,
                                                        self.full_size_only_fraction)
