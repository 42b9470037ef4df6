"""Optimizer for Matryoshka models: the pretrained encoder and the freshly initialised heads learn at their own rates.

Why: new heads (and projections) start at ~0.02-sized weights and Adam moves a weight by about the learning rate per
step, so at an encoder's fine-tuning rate (2e-5 .. 2e-4) a head needs thousands of steps to reach useful weights,
while the pretrained encoder must move slowly. A rate of 3e-2, scaled by sqrt(full / d) for the head of size d, lets
every nested head reach about what a linear probe on the same features reaches within one epoch of fine-tuning, where
at the encoder's rate the small heads stay far behind.
"""

import math

import torch

from ..models.modeling_matryoshka_classification import MatryoshkaLinear

# Classification heads' rate when the arguments name none: fresh heads need it to train within an epoch (above).
DEFAULT_HEAD_LEARNING_RATE = 3e-2


def build_optimizer(model, learning_rate, head_learning_rate=None, weight_decay=0.0, scale_heads_by_size=False,
                    betas=(0.9, 0.999), eps=1e-8):
    """AdamW with the pretrained encoder at `learning_rate` and every other parameter (classification heads,
    projection) at `head_learning_rate` (default: `learning_rate`).

    With `scale_heads_by_size`, the head of size d (MRL, one head per size) learns at
    `head_learning_rate * sqrt(full / d)`: a prefix of d raw coordinates is about sqrt(d / full) as long as the full
    vector, so a small head needs proportionally larger weights. Biases and normalization weights (1-d parameters)
    get no weight decay, as in `Trainer`.
    """
    inner = getattr(model, "matryoshka", model)  # a task model holds its MatryoshkaModel there
    encoder_ids = {id(p) for p in inner.encoder.parameters()}
    size_factor = {}
    for module in model.modules():
        # Tied heads share one weight; heads that scale their inputs already get the same effect (MatryoshkaLinear).
        sized = isinstance(module, MatryoshkaLinear) and not (module.efficient or module.scale_inputs)
        if scale_heads_by_size and sized:
            for dim, head in zip(module.dims, module.heads):
                size_factor.update({id(p): math.sqrt(module.in_features / dim) for p in head.parameters()})
    groups = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if id(parameter) in encoder_ids or head_learning_rate is None:
            lr = learning_rate
        else:
            lr = head_learning_rate * size_factor.get(id(parameter), 1.0)
        decay = weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(parameter)
    return torch.optim.AdamW(
        [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()], betas=betas, eps=eps
    )


__all__ = ["DEFAULT_HEAD_LEARNING_RATE", "build_optimizer"]
