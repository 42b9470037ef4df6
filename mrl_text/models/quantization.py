"""The one rule for int8 / uint8 / binary codes of a Matryoshka prefix: encode, the evaluators and retrieval use it.

The codes mean what sentence-transformers' `quantize_embeddings` makes of the same float embeddings and ranges:
- `int8` / `uint8`: per coordinate, the calibrated range `[min, max]` is cut into 255 equal steps and each value
  becomes the index of its step, `floor((x - min) / step)` clipped to 0..255 (`int8` shifts it by -128);
- `binary` / `ubinary`: one bit per coordinate, set when the value is > 0, packed eight to a byte (first coordinate
  in the highest bit); `binary` stores each byte shifted by -128 as int8, `ubinary` as uint8.
Ranges are a `(2, dim)` float32 array (row 0: minima, row 1: maxima), the layout `quantize_embeddings(ranges=)`
takes, so codes made here and there from the same ranges are identical.

Unlike sentence-transformers, an int8 code is never made from ranges guessed on the batch at hand: the ranges of
a model come from `model.calibrate_quantization(texts)`, per trained size, and travel in its config.json.

With 2D Matryoshka (`encode(..., layers=k)`) the embeddings after `k` layers have ranges of their own: they are
calibrated per (depth, size) and kept under keys `"64/layers=3"` next to the full depth's `"64"`.

This file travels with saved models (modeling_matryoshka.py imports it): torch, the standard library and its sibling
files only.
"""

import torch

from .configuration_matryoshka import check_dim, ranges_key
from .modeling_matryoshka_depth import check_layers

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
SCALAR_PRECISIONS = ("int8", "uint8")
BIT_PRECISIONS = ("binary", "ubinary")
_STEPS = 255  # int8/uint8: 256 codes, so 255 steps between a coordinate's minimum and maximum


def check_precision(precision, dim=None):
    """`precision` if it is one of [`PRECISIONS`] (and, for bit codes, `dim` packs into whole bytes); else a
    ValueError naming the value and the fix."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; choose one of {', '.join(PRECISIONS)}.")
    if precision in BIT_PRECISIONS and dim is not None and dim % 8:
        raise ValueError(
            f"precision={precision!r} packs 8 coordinates per byte, so the size must be a multiple of 8; got "
            f"dim={dim}. Use a size such as {max(8, dim - dim % 8)} or {dim + 8 - dim % 8}."
        )
    return precision


def bytes_per_vector(dim, precision):
    """Storage of one `dim`-sized vector at `precision`: 4 bytes per float32, 1 per int8/uint8, 1/8 per bit."""
    check_precision(precision, dim)
    return {"float32": 4 * dim, "int8": dim, "uint8": dim, "binary": dim // 8, "ubinary": dim // 8}[precision]


def _as_float_tensor(embeddings):
    if not isinstance(embeddings, torch.Tensor):
        embeddings = torch.as_tensor(embeddings)
    if not embeddings.is_floating_point():
        raise ValueError(f"Embeddings to quantize must be floats; got {embeddings.dtype} (already quantized?).")
    return embeddings.float()


def calibration_ranges(embeddings):
    """Per-coordinate `[minima, maxima]` `(2, dim)` of float embeddings `(n, dim)`: the ranges int8/uint8 codes use.

    Needs at least two finite rows: one row has no spread to measure."""
    embeddings = _as_float_tensor(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(
            f"Calibration needs at least 2 embeddings (a 2-D array); got shape {tuple(embeddings.shape)}. "
            "Calibrate on a few hundred texts like the ones you will encode."
        )
    if not torch.isfinite(embeddings).all():
        raise ValueError("Calibration embeddings hold NaN or infinite values; drop those rows.")
    return torch.stack([embeddings.min(0).values, embeddings.max(0).values])


def check_ranges(ranges, dim):
    """`ranges` as a float32 `(2, dim)` tensor with finite values and minima <= maxima; else a clear ValueError."""
    ranges = torch.as_tensor(ranges, dtype=torch.float32)
    if tuple(ranges.shape) != (2, dim):
        raise ValueError(
            f"Quantization ranges must have shape (2, {dim}) (minima, maxima); got {tuple(ranges.shape)}."
        )
    if not torch.isfinite(ranges).all() or (ranges[0] > ranges[1]).any():
        raise ValueError("Quantization ranges must be finite with minima <= maxima; calibrate again.")
    return ranges


def step_sizes(ranges):
    """The width of one int8/uint8 step per coordinate `(dim,)`. A float query times these, dotted with int8 codes,
    ranks documents exactly as the query dotted with their dequantized vectors (the rest is one constant per query):
    how retrieval searches int8 codes with float queries."""
    steps = (ranges[1] - ranges[0]) / _STEPS
    return torch.where(steps == 0, torch.ones_like(steps), steps)  # a constant coordinate: any step maps it to 0


def quantize(embeddings, precision, ranges=None):
    """Codes of float embeddings `(..., dim)` at `precision` (see the module docstring); a torch tensor.

    `float32` returns the embeddings as float32; `int8`/`uint8` need `ranges` `(2, dim)`; bit codes have
    `dim / 8` bytes per vector.
    """
    embeddings = _as_float_tensor(embeddings)
    dim = embeddings.shape[-1]
    check_precision(precision, dim)
    if precision == "float32":
        return embeddings
    if precision in SCALAR_PRECISIONS:
        if ranges is None:
            raise ValueError(f"precision={precision!r} needs calibrated ranges; none were given.")
        ranges = check_ranges(ranges, dim)
        codes = torch.floor((embeddings - ranges[0]) / step_sizes(ranges)).clamp(0, _STEPS)
        return codes.to(torch.uint8) if precision == "uint8" else (codes - 128).to(torch.int8)
    bits = (embeddings > 0).reshape(*embeddings.shape[:-1], dim // 8, 8).to(torch.int32)
    packed = (bits << torch.arange(7, -1, -1, dtype=torch.int32)).sum(-1)
    return packed.to(torch.uint8) if precision == "ubinary" else (packed - 128).to(torch.int8)


def dequantize(codes, precision, ranges=None):
    """Float32 stand-ins `(..., dim)` for codes: the middle of each int8/uint8 step (unbiased, unlike its lower
    edge), or +1/-1 per bit for binary codes (their dot products are then `dim - 2 * Hamming distance`)."""
    check_precision(precision)
    codes = torch.as_tensor(codes)
    if precision == "float32":
        return codes.float()
    if precision in SCALAR_PRECISIONS:
        if ranges is None:
            raise ValueError(f"Dequantizing {precision} codes needs the ranges they were made with.")
        ranges = check_ranges(ranges, codes.shape[-1])
        steps = codes.to(torch.float32) + (128 if precision == "int8" else 0)
        return ranges[0] + (steps + 0.5) * step_sizes(ranges)
    packed = codes.to(torch.int32) + (128 if precision == "binary" else 0)
    bits = (packed.unsqueeze(-1) >> torch.arange(7, -1, -1, dtype=torch.int32)) & 1
    return (2.0 * bits - 1).reshape(*codes.shape[:-1], 8 * codes.shape[-1])


# --- the ranges a model keeps in config.json ----------------------------------------------------------------------


def ranges_to_config(ranges_by_dim, layers=None):
    """`{dim: (2, dim) tensor}` -> the JSON-ready `{"64": [[minima], [maxima]], ...}` of `config.quantization_ranges`
    (keys `"64/layers=3"` for ranges measured after the first `layers` layers).

    float32 values are exact in JSON (Python floats), so a saved or pulled model makes the same codes."""
    return {ranges_key(dim, layers): torch.as_tensor(r, dtype=torch.float32).tolist()
            for dim, r in sorted(ranges_by_dim.items())}


def model_ranges(config, dim, precision, layers=None):
    """The calibrated `(2, dim)` ranges of a Matryoshka `config` at size `dim` (after the first `layers` layers;
    None: full depth) for `precision` (None for float and bit codes); an uncalibrated model, size or depth raises
    an error that says how to calibrate. A depth never borrows the full depth's ranges: its values differ."""
    if precision not in SCALAR_PRECISIONS:
        return None
    saved = getattr(config, "quantization_ranges", None) or {}
    key = ranges_key(dim, layers)
    if key not in saved:
        have = [k for k in saved if k.partition("/")[2] == key.partition("/")[2]]  # the same depth's sizes
        have = sorted((int(k.partition("/")[0]) for k in have), reverse=True)
        where = "" if layers is None else f" at layers={layers}"
        raise ValueError(
            f"precision={precision!r} at dim={dim}{where} needs calibrated ranges, and this model has "
            + (f"them only for sizes {have}" if have else "none") + (where if have or saved else "")
            + ". Call `model.calibrate_quantization(texts"
            + ("" if layers is None else f", layers=[{layers}]") + ")` on a few hundred texts like the ones you "
            "will encode (then save the model: the ranges go into config.json)"
            + (f", with dims=[{dim}]" if have else "") + "."
        )
    return check_ranges(saved[key], dim)


def calibrate(model, texts, dims=None, layers=None, **encode_kwargs):
    """`MatryoshkaModel.calibrate_quantization`: measure int8/uint8 ranges of `model` on `texts` at every size in
    `dims` (default: the trained sizes) and every depth in `layers` (default: `config.matryoshka_layers`, else the
    full depth), one encoding pass per depth, and add them to `config.quantization_ranges`. Each size's ranges
    come from that size's embedding as `encode` returns it (adaptor, truncation, re-normalization).

    Returns `{dim: (2, dim) tensor}` for the full depth and `{(layers, dim): ...}` for shallower depths."""
    config = model.config
    dims = [check_dim(d, config.embedding_size) for d in (dims or config.matryoshka_dimensions)]
    if layers is None or isinstance(layers, int):
        layers = [layers] if layers is not None else (config.matryoshka_layers or [None])
    depths = list(dict.fromkeys(check_layers(model, k) for k in layers))  # all checked before encoding; full: None
    texts = [texts] if isinstance(texts, str) else list(texts)
    measured = {}
    for depth in depths:
        full = model.encode(texts, output_value="full_embeddings", layers=depth, **encode_kwargs)
        with torch.inference_mode():
            sized = {d: model.embeddings_at_size(full.to(model.device, model.dtype), d).float().cpu() for d in dims}
        ranges = {d: calibration_ranges(embeddings) for d, embeddings in sized.items()}
        config.quantization_ranges = {**(config.quantization_ranges or {}), **ranges_to_config(ranges, depth)}
        measured.update({d if depth is None else (depth, d): r for d, r in ranges.items()})
    return measured


__all__ = [
    "BIT_PRECISIONS",
    "PRECISIONS",
    "SCALAR_PRECISIONS",
    "bytes_per_vector",
    "calibrate",
    "calibration_ranges",
    "check_precision",
    "check_ranges",
    "dequantize",
    "model_ranges",
    "quantize",
    "ranges_to_config",
    "step_sizes",
]
