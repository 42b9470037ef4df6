"""Base losses by name, for configuration files: `get_loss("infonce", scale=20.0)` builds `InfoNCELoss(scale=20.0)`.

Python code builds loss objects directly and hands them to `MatryoshkaTrainer(loss=...)`; the names serve scripts whose
options come from YAML or the command line.
"""

import inspect

from .classification import MatryoshkaCrossEntropyLoss
from .contrastive import InfoNCELoss
from .cosent import CoSENTLoss
from .distillation import DistillMSELoss

LOSSES = {
    "infonce": InfoNCELoss,
    "cosent": CoSENTLoss,
    "cross_entropy": MatryoshkaCrossEntropyLoss,
    "distill_mse": DistillMSELoss,
}


def get_loss(name, **options):
    """Build the base loss registered as `name` ("infonce", "cosent", "cross_entropy", "distill_mse") with `options`
    (e.g. `get_loss("infonce", scale=20.0)`, `get_loss("distill_mse", teacher=teacher)`,
    `get_loss("cross_entropy", model=classifier)`).

    Wrap an embedding loss in `MatryoshkaLoss.from_config(model.config, base)`; `cross_entropy` weights the sizes
    itself (`sums_over_sizes`) and is used alone.
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}.")
    loss_class = LOSSES[name]
    parameters = list(inspect.signature(loss_class.__init__).parameters.values())[1:]
    accepted = [p.name for p in parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"Loss {name!r} takes no option(s) {unknown}; it accepts {accepted or 'none'}.")
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise ValueError(f"Loss {name!r} needs the option(s) {missing}, e.g. get_loss({name!r}, {missing[0]}=...).")
    return loss_class(**options)


__all__ = ["LOSSES", "get_loss"]
