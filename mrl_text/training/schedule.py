"""The size schedule of Matryoshka training: how much the sizes below the full one weigh at each optimizer step.

One object, `SizeSchedule`, a transformers `TrainerCallback`. It has two phases, each a share of the run's optimizer
steps: for the first `full_size_only_fraction` of them only the full size trains (the smaller sizes weigh 0 and their
losses are not computed), and over the first `smaller_sizes_warmup_fraction` of them the smaller sizes' weights rise
linearly to their configured values. Both default to 0, the paper's recipe: every size from the first step.
Bringing the smaller sizes in late or gradually lets the shared encoder learn the full-size task first, which keeps the
full size closer to plain training at some cost to the smallest sizes.

Before every optimizer step the schedule sets `smaller_sizes_scale` on what it drives: given to
`MatryoshkaTrainer(size_schedule=...)`, the trainer's loss (`MatryoshkaLoss` and `MatryoshkaDepthLoss` use it,
`MatryoshkaCrossEntropyLoss` hands it to the classifier's heads); in `callbacks=` of a plain transformers `Trainer`,
the model, which must compute its own Matryoshka loss (`MatryoshkaForMaskedLM`, `MatryoshkaForSequenceClassification`).
"""

from transformers import TrainerCallback


def smaller_sizes_scale(step, max_steps, warmup_fraction=0.0, full_size_only_fraction=0.0):
    """The factor on every smaller size's loss weight at 0-based optimizer `step` of `max_steps`: 0 for the first
    `full_size_only_fraction` of the steps (the full size alone), and rising linearly as (step + 1) / warmup steps to 1
    over the first `warmup_fraction` of them; 1 throughout when both are 0."""
    if step < full_size_only_fraction * max_steps:
        return 0.0
    warmup = warmup_fraction * max_steps
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def check_fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be between 0 and 1 (a share of the optimizer steps).")


class SizeSchedule(TrainerCallback):
    """Sets `smaller_sizes_scale` (the factor on every size below the full one) before every optimizer step.

    Args:
        smaller_sizes_warmup_fraction (`float`, defaults to 0.0): share of the steps over which the smaller sizes'
            weights rise linearly from 0 to their values (0: full weight from the first step).
        full_size_only_fraction (`float`, defaults to 0.0): share of the steps, from the start, that train only the
            full size.

    What it drives (see the module docstring): the object given to `drive()` (`MatryoshkaTrainer(size_schedule=...)`
    gives its loss), else the model the `Trainer` trains. After training the scale goes back to 1, so evaluation and
    later use weigh every size as configured.

    Example:

    ```python
    >>> loss = MatryoshkaLoss.from_config(model.config, InfoNCELoss())
    >>> schedule = SizeSchedule(smaller_sizes_warmup_fraction=0.5)
    >>> MatryoshkaTrainer(model=model, args=args, train_dataset=pairs, loss=loss, size_schedule=schedule).train()
    >>> Trainer(model=mlm_model, args=args, train_dataset=texts, data_collator=collator, callbacks=[schedule]).train()
    ```
    """

    def __init__(self, smaller_sizes_warmup_fraction=0.0, full_size_only_fraction=0.0):
        check_fraction("smaller_sizes_warmup_fraction", smaller_sizes_warmup_fraction)
        check_fraction("full_size_only_fraction", full_size_only_fraction)
        self.smaller_sizes_warmup_fraction = float(smaller_sizes_warmup_fraction)
        self.full_size_only_fraction = float(full_size_only_fraction)
        self.target = None

    def scale_at(self, step, max_steps):
        """The factor on the smaller sizes' weights at 0-based optimizer `step` of `max_steps`."""
        return smaller_sizes_scale(step, max_steps, self.smaller_sizes_warmup_fraction, self.full_size_only_fraction)

    def drive(self, target):
        """Drive `target` (a loss or a model with a `smaller_sizes_scale` attribute) instead of the trained model."""
        self._check(target)
        self.target = target
        return self

    def get_config_dict(self):
        return {"smaller_sizes_warmup_fraction": self.smaller_sizes_warmup_fraction,
                "full_size_only_fraction": self.full_size_only_fraction}

    def __repr__(self):
        options = ", ".join(f"{key}={value}" for key, value in self.get_config_dict().items())
        return f"{type(self).__name__}({options})"

    @staticmethod
    def _check(target):
        if not hasattr(target, "smaller_sizes_scale"):
            raise ValueError(
                f"SizeSchedule sets `smaller_sizes_scale`; {type(target).__name__} has none. With a plain Trainer the "
                "model must compute its own Matryoshka loss (MatryoshkaForMaskedLM, "
                "MatryoshkaForSequenceClassification); for an embedding model give the schedule to "
                "MatryoshkaTrainer(size_schedule=...), which drives its loss."
            )

    def _driven(self, model):
        target = self.target if self.target is not None else getattr(model, "module", model)
        self._check(target)
        return target

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._driven(model)  # refuse a target without the knob before the first step, not at it

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._driven(model).smaller_sizes_scale = self.scale_at(state.global_step, state.max_steps)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._driven(model).smaller_sizes_scale = 1.0


__all__ = ["SizeSchedule", "smaller_sizes_scale"]
