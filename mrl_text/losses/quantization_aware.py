"""`QuantizationAwareLoss`: train every Matryoshka prefix to stay good as int8 and binary codes.

One design: a wrapper of the *base* loss that goes inside `MatryoshkaLoss`, so the sizes (their weights, sampling,
size schedule, GradCache mini-batches, DDP gathering) stay `MatryoshkaLoss`'s and the precisions are added beside them:

    qat = QuantizationAwareLoss.from_config(model.config, InfoNCELoss(), precisions=["float32", "int8", "binary"])
    loss = MatryoshkaLoss.from_config(model.config, qat)
    MatryoshkaTrainer(model=model, args=args, train_dataset=pairs, loss=loss).train()  # ranges land in config.json

`MatryoshkaLoss` cuts each size's re-normalized prefix of the embeddings computed once per step (the prefix
`encode(dim=)` returns) and hands it here; this loss scores the base loss on the prefix as each precision stores it,
with the codes of `mrl_text.models.quantization` (the rule `encode(precision=)` and search use) in the forward pass
and a straight-through gradient in the backward pass.
"""

import math
import random

import torch
from torch import nn
from transformers import TrainerCallback

from ..models.quantization import (
    BIT_PRECISIONS,
    SCALAR_PRECISIONS,
    check_precision,
    check_ranges,
    dequantize,
    quantize,
    ranges_to_config,
)


def binary_straight_through(prefix):
    """The binary codes of `prefix` `(..., dim)` as unit vectors, `+-1 / sqrt(dim)`, with a clipped-identity gradient.

    The dot product of two such vectors is `1 - 2 * Hamming distance / dim`, the ranking binary search uses, on the
    same scale as the cosine of float prefixes (a loss's temperature fits both). Backward, the gradient is the one of
    `hardtanh(sqrt(dim) * x) / sqrt(dim)`: identity while a coordinate is within one standard unit of 0 (the bits that
    can still flip), none beyond."""
    root = math.sqrt(prefix.shape[-1])
    signs = dequantize(quantize(prefix.detach(), "binary"), "binary").to(prefix.dtype)  # +-1, the stored bits
    surrogate = (prefix * root).clamp(-1.0, 1.0)
    return (surrogate + (signs - surrogate).detach()) / root


def binary_tempered_tanh(prefix, temperature):
    """The tempered-tanh relaxation of the binary codes of `prefix` `(..., dim)`: `tanh(sqrt(dim) * x / temperature)`
    scaled to unit length, like the codes. Smooth, with a gradient for every coordinate; the dot products tend to the
    codes' (Hamming similarity) as the temperature goes to 0 (`QuantizationAwareLoss(binary_estimator="tanh")` anneals
    it during training)."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0.")
    soft = torch.tanh(prefix * math.sqrt(prefix.shape[-1]) / temperature)
    return soft / soft.norm(dim=-1, keepdim=True).clamp_min(1e-12)


BINARY_ESTIMATORS = ("clipped", "tanh")


def int8_straight_through(prefix, ranges):
    """`prefix` `(..., dim)` as its int8 codes decode (the middle of each of 255 steps of `ranges` `(2, dim)`), with
    the gradient of clipping to the ranges: identity inside, none outside (a value beyond the range stores as the
    end code whatever it is)."""
    ranges = ranges.to(prefix.device, prefix.dtype)
    clipped = torch.maximum(torch.minimum(prefix, ranges[1]), ranges[0])
    decoded = dequantize(quantize(prefix.detach(), "int8", ranges), "int8", ranges).to(prefix.dtype)
    return clipped + (decoded - clipped).detach()


class QuantizationAwareLoss(nn.Module):
    """A base loss scored on each prefix as every precision stores it: float32, int8/uint8, binary/ubinary codes.

    Goes inside `MatryoshkaLoss` (module docstring), which hands it every size's prefix of the same embeddings; the
    encoder runs once per step whatever the sizes and precisions. Per size, the loss is
    `sum_p weight_p * base_loss(prefixes as precision p stores them, labels)`, with:
    - `binary`/`ubinary`: the +-1 bits of `mrl_text.models.quantization.quantize` scaled to unit length (dot
      products = Hamming similarity, as binary search ranks), a clipped-identity straight-through gradient
      (`binary_estimator="clipped"`); or, with `binary_estimator="tanh"`, the tempered tanh relaxation of the codes
      (`binary_tempered_tanh`), its temperature annealed geometrically from `binary_temperature[0]` to
      `binary_temperature[1]` over training so the loss ends on codes that are nearly the bits (evaluation, out of
      training, scores the bits themselves);
    - `int8`/`uint8` (the same decoded values): fake quantization with the 255-step per-coordinate ranges of
      `quantize`, straight-through inside the ranges. The ranges are tracked during training per size, as
      `calibrate_quantization` measures them (per-coordinate minimum and maximum of the size's re-normalized
      prefix, here of the batch's every text column), smoothed over steps by an exponential moving average, and
      written to `config.quantization_ranges` at the end of training (and before each checkpoint save) by the
      callback `MatryoshkaTrainer` adds (`trainer_callback`), so `encode(precision="int8")`, `FunnelIndex` and
      the export use the trained ranges. Call `save_ranges` yourself when training with your own loop.
    Every column is quantized (queries too: binary search compares codes with codes; int8 search compares float
    queries with int8 documents, so quantizing queries too is the stricter case, and STS compares codes with codes).
    Labels that are embeddings (a teacher's) stay float.

    Args:
        base_loss (`nn.Module`): a loss called as `base_loss(embeddings, labels)` on unit-length prefixes (InfoNCE,
            CoSENT, distillation).
        precisions (`list[str]`): the precisions to train, from `mrl_text.models.quantization.PRECISIONS`; bit
            codes need sizes that are multiples of 8.
        precision_weights (`list[float]`, *optional*): one weight per precision (default 1.0 each).
        n_precisions_per_step (`int`, *optional*): sample this many precisions per size and step (cheaper steps);
            with `keep_float32`, float32 is always in the sample.
        keep_float32 (`bool`): with `n_precisions_per_step`, always train float32 (the float quality stays).
        ranges_momentum (`float`): the weight of the past in the moving average of int8 ranges (0: the last batch's
            extremes alone).
        binary_estimator (`str`): `"clipped"` (the bits forward, a clipped-identity gradient) or `"tanh"` (the
            tempered tanh forward, annealed towards the bits).
        binary_temperature (`float` or `(float, float)`): with `"tanh"`, the temperature at the start and at the end
            of training (annealed geometrically; one number: constant).
        quantization_warmup (`float`): the fraction of the training steps that train float32 alone before the
            quantized terms join (0: from the first step).
    The schedules (the tanh temperature, the warm-up) follow the training progress, which the callback
    `MatryoshkaTrainer` adds sets at each step; with your own loop call `set_progress(step / total_steps)`.

    Reference: Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
    Inference", CVPR 2018 (fake quantization with tracked ranges); Bengio et al. 2013 (straight-through gradients).
    """

    citation = """@inproceedings{jacob2018quantization,
  title     = {Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference},
  author    = {Jacob, Benoit and Kligys, Skirmantas and Chen, Bo and Zhu, Menglong and Tang, Matthew and Howard, Andrew and Adam, Hartwig and Kalenichenko, Dmitry},
  booktitle = {CVPR},
  year      = {2018}
}"""  # noqa: E501 (BibTeX: one author list per line)

    def __init__(self, base_loss, precisions=("float32", "int8", "binary"), precision_weights=None,
                 n_precisions_per_step=None, keep_float32=True, ranges_momentum=0.9, binary_estimator="clipped",
                 binary_temperature=(1.0, 0.1), quantization_warmup=0.0):
        super().__init__()
        if getattr(base_loss, "sums_over_sizes", False):
            raise ValueError(f"{type(base_loss).__name__} weights the sizes of nested heads itself; "
                             "QuantizationAwareLoss trains embedding losses (InfoNCE, CoSENT, distillation).")
        if isinstance(precisions, str):
            precisions = [precisions]
        precisions = [check_precision(p) for p in precisions]
        if not precisions or len(set(precisions)) != len(precisions):
            raise ValueError(f"precisions={precisions!r}: give each precision to train once, e.g. "
                             "['float32', 'int8', 'binary'].")
        weights = [1.0] * len(precisions) if precision_weights is None else [float(w) for w in precision_weights]
        if len(weights) != len(precisions):
            raise ValueError(f"precision_weights={list(precision_weights)!r} has {len(weights)} weights for the "
                             f"{len(precisions)} precisions {precisions}; give one weight per precision.")
        if any(not (w >= 0 and math.isfinite(w)) for w in weights) or not any(weights):
            raise ValueError(f"precision_weights={weights!r} must be finite, >= 0 and not all 0.")
        if n_precisions_per_step is not None and not 1 <= n_precisions_per_step <= len(precisions):
            raise ValueError(f"n_precisions_per_step={n_precisions_per_step!r} must be between 1 and the "
                             f"{len(precisions)} precisions {precisions}.")
        if not 0 <= ranges_momentum < 1:
            raise ValueError(f"ranges_momentum={ranges_momentum!r} must be in [0, 1) (0.9 is usual).")
        if binary_estimator not in BINARY_ESTIMATORS:
            raise ValueError(f"binary_estimator={binary_estimator!r} is not one of {list(BINARY_ESTIMATORS)} "
                             "('clipped': the bits with a clipped straight-through gradient; 'tanh': a tempered tanh "
                             "annealed towards the bits).")
        temperatures = ((binary_temperature,) * 2 if isinstance(binary_temperature, (int, float))
                        else tuple(binary_temperature))
        if len(temperatures) != 2 or not all(isinstance(t, (int, float)) and 0 < t < math.inf for t in temperatures):
            raise ValueError(f"binary_temperature={binary_temperature!r} must be a temperature > 0 or a (start, end) "
                             "pair of them, e.g. (1.0, 0.1).")
        if not 0 <= quantization_warmup < 1:
            raise ValueError(f"quantization_warmup={quantization_warmup!r} must be a fraction of the steps in [0, 1).")
        if quantization_warmup and "float32" not in precisions:
            raise ValueError(f"quantization_warmup={quantization_warmup!r} trains float32 alone first, but "
                             f"precisions={precisions!r} has no float32.")
        self.base_loss = base_loss
        self.precisions = precisions
        self.precision_weights = weights
        self.n_precisions_per_step = n_precisions_per_step
        self.keep_float32 = keep_float32
        self.ranges_momentum = float(ranges_momentum)
        self.binary_estimator = binary_estimator
        self.binary_temperature = tuple(float(t) for t in temperatures)
        self.quantization_warmup = float(quantization_warmup)
        self.progress = None  # the fraction of training done, set by the callback (or set_progress)
        self.tracked_ranges = {}  # size -> (2, size) float32 minima and maxima, moving averages over steps

    @classmethod
    def from_config(cls, config, base_loss, precisions=("float32", "int8", "binary"), **kwargs):
        """The loss for a `MatryoshkaConfig`'s sizes: bit precisions are checked against every size up front (a
        size that is not a multiple of 8 fails here, not at the first step)."""
        for precision in [precisions] if isinstance(precisions, str) else precisions:
            for dim in config.matryoshka_dimensions:
                check_precision(precision, dim)
        return cls(base_loss, precisions, **kwargs)

    # The dataset layout and the batch-computed targets are the base loss's.
    min_text_columns = property(lambda self: getattr(self.base_loss, "min_text_columns", 1))
    max_text_columns = property(lambda self: getattr(self.base_loss, "max_text_columns", None))
    needs_labels = property(lambda self: getattr(self.base_loss, "needs_labels", None))
    teacher_tokenizer = property(lambda self: getattr(self.base_loss, "teacher_tokenizer", None))
    embedding_labels = property(lambda self: getattr(self.base_loss, "embedding_labels", False))

    def compute_labels(self, columns, labels):
        """The base loss's targets computed from the batch (see `DistillMSELoss`); `labels` unchanged otherwise."""
        compute = getattr(self.base_loss, "compute_labels", None)
        return labels if compute is None else compute(columns, labels)

    def set_progress(self, fraction):
        """The fraction of training done (0 at the first step, towards 1 at the last), which drives the schedules."""
        self.progress = min(max(float(fraction), 0.0), 1.0)

    def scheduled_progress(self):
        """The progress the schedules read; an error when a schedule needs it and no one has set it."""
        if self.progress is None:
            raise ValueError(f"binary_estimator={self.binary_estimator!r} with binary_temperature="
                             f"{self.binary_temperature!r} and quantization_warmup={self.quantization_warmup!r} "
                             "follow the training progress: MatryoshkaTrainer sets it; with your own loop call "
                             "loss.set_progress(step / total_steps) before each step.")
        return self.progress

    def temperature(self):
        """The tanh temperature now: geometric from the start temperature to the end one over training."""
        start, end = self.binary_temperature
        return start if start == end else start * (end / start) ** self.scheduled_progress()

    def precisions_for_step(self):
        """The (precision, weight) pairs scored now: all of them, or a fresh sample of `n_precisions_per_step`."""
        indices = list(range(len(self.precisions)))
        count = self.n_precisions_per_step
        if self.quantization_warmup and self.training and self.scheduled_progress() < self.quantization_warmup:
            indices = [i for i in indices if self.precisions[i] == "float32"]  # the warm-up: float32 alone
        elif count is not None and count < len(indices):
            fixed = [i for i in indices if self.keep_float32 and self.precisions[i] == "float32"][:count]
            indices = sorted(fixed + random.sample([i for i in indices if i not in fixed], count - len(fixed)))
        return [(self.precisions[i], self.precision_weights[i]) for i in indices]

    @torch.no_grad()
    def track_ranges(self, prefixes):
        """Fold this batch's per-coordinate minima and maxima of the size's prefixes (every column; every process
        under DDP) into the moving-average ranges of that size; returns them `(2, dim)`."""
        dim = prefixes[0].shape[-1]
        rows = torch.cat([p.detach().reshape(-1, dim) for p in prefixes]).float()
        minima, maxima = rows.min(0).values, rows.max(0).values
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(minima, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(maxima, op=torch.distributed.ReduceOp.MAX)
        batch = torch.stack([minima, maxima])
        past = self.tracked_ranges.get(dim)
        momentum = self.ranges_momentum
        self.tracked_ranges[dim] = batch if past is None else momentum * past.to(batch.device) + (1 - momentum) * batch
        return self.tracked_ranges[dim]

    def stored(self, prefix, precision, ranges):
        """`prefix` as `precision` stores it, with a straight-through gradient."""
        if precision in BIT_PRECISIONS:
            check_precision(precision, prefix.shape[-1])  # a clear error for a size that is not a multiple of 8
            if self.binary_estimator == "tanh" and self.training and torch.is_grad_enabled():
                return binary_tempered_tanh(prefix, self.temperature())
            return binary_straight_through(prefix)
        if precision in SCALAR_PRECISIONS:
            return int8_straight_through(prefix, ranges)
        return prefix

    def forward(self, embeddings, labels=None):
        """`embeddings`: one size's prefixes (a list of `(batch, dim)` tensors, one per text column); a scalar."""
        prefixes = [embeddings] if isinstance(embeddings, torch.Tensor) else list(embeddings)
        dim = prefixes[0].shape[-1]
        chosen = self.precisions_for_step()
        ranges = None
        if any(p in SCALAR_PRECISIONS for p, _ in chosen):
            if self.training and torch.is_grad_enabled():
                ranges = self.track_ranges(prefixes)
            elif dim in self.tracked_ranges:  # evaluation: the ranges trained so far, unchanged
                ranges = self.tracked_ranges[dim]
            else:
                ranges = torch.stack([torch.cat(prefixes).min(0).values, torch.cat(prefixes).max(0).values])
        total = 0.0
        for precision, weight in chosen:
            if weight:
                stored = [self.stored(p, precision, ranges) for p in prefixes]
                total = total + weight * self.base_loss(stored, labels)
        return total

    def save_ranges(self, config):
        """Write the tracked int8 ranges (every size trained so far) to `config.quantization_ranges`, which
        `encode(precision="int8")`, `FunnelIndex` and the export read; returns `{dim: (2, dim) tensor}` ({} when no
        int8/uint8 precision was trained). Existing ranges of other sizes or depths are kept."""
        ranges = {dim: check_ranges(r.detach().cpu(), dim) for dim, r in self.tracked_ranges.items()}
        if ranges:
            config.quantization_ranges = {**(getattr(config, "quantization_ranges", None) or {}),
                                          **ranges_to_config(ranges)}
        return ranges

    def trainer_callback(self, model):
        """The callback `MatryoshkaTrainer` adds for this loss: the tracked ranges go to `model.config` before every
        checkpoint save and at the end of training."""
        return QuantizationRangesCallback(self, model)

    def get_config_dict(self):
        """What trained the model, for its card: the base loss and its options, the precisions and their weights."""
        base_config = getattr(self.base_loss, "get_config_dict", dict)
        return {
            "loss": type(self.base_loss).__name__,
            "loss_config": base_config(),
            "precisions": list(self.precisions),
            "precision_weights": list(self.precision_weights),
            "n_precisions_per_step": self.n_precisions_per_step,
            "keep_float32": self.keep_float32,
            "ranges_momentum": self.ranges_momentum,
            "binary_estimator": self.binary_estimator,
            **({"binary_temperature": list(self.binary_temperature)} if self.binary_estimator == "tanh" else {}),
            "quantization_warmup": self.quantization_warmup,
        }

    def extra_repr(self):
        return f"precisions={self.precisions}, precision_weights={self.precision_weights}"


def find_quantization_aware(loss):
    """The `QuantizationAwareLoss` inside `loss` (itself, or reached through the wrappers' `base_loss` / `loss`
    attributes: `MatryoshkaLoss`, `MatryoshkaDepthLoss`), or None."""
    seen = set()
    while loss is not None and id(loss) not in seen:
        if isinstance(loss, QuantizationAwareLoss):
            return loss
        seen.add(id(loss))
        loss = getattr(loss, "base_loss", None) or getattr(loss, "loss", None)
    return None


class QuantizationRangesCallback(TrainerCallback):
    """Writes a `QuantizationAwareLoss`'s tracked int8 ranges into `model.config` before each checkpoint save and
    each evaluation (`on_step_end` runs before the trainer saves or evaluates) and at the end of training; sets the
    loss's training progress at each step (its schedules)."""

    def __init__(self, loss, model):
        self.loss = loss
        self.model = model

    def on_step_begin(self, args, state, control, **kwargs):
        # The schedules (tanh temperature, float warm-up) follow the fraction of the steps done.
        self.loss.set_progress(state.global_step / max(state.max_steps, 1))

    def on_step_end(self, args, state, control, **kwargs):
        # Before an evaluation too: it scores int8 with the ranges trained so far (the card's precision grid).
        if control.should_save or control.should_evaluate:
            self.loss.save_ranges(self.model.config)

    def on_train_end(self, args, state, control, **kwargs):
        self.loss.save_ranges(self.model.config)


__all__ = ["QuantizationAwareLoss", "QuantizationRangesCallback", "binary_straight_through", "binary_tempered_tanh",
           "find_quantization_aware", "int8_straight_through"]
