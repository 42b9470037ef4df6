"""Depth of a Matryoshka model (2D Matryoshka): run only the first `k` encoder layers, pool any layer's states.

Li et al., "2D Matryoshka Sentence Embeddings" (2024, https://arxiv.org/abs/2402.14776); Zhuang et al., "Starbucks"
(2025). A model trained with `mrl_text.losses.depth.MatryoshkaDepthLoss` gives embeddings after its first `k` layers
for every `k` in `config.matryoshka_layers`; `encode(texts, layers=k)` then skips the remaining layers entirely.

Encoders of the BERT family end every layer with a LayerNorm (post-LN) and have no final norm after the stack, so the
token states after layer `k` are pooled exactly as the last layer's are. Encoders outside `LAYER_STACKS` (a final norm,
or another layout) are refused with a clear error rather than given unnormalized states.

Like modeling_matryoshka.py, this file travels next to saved weights: it imports only the standard library and its
sibling files (relative imports).
"""

import contextlib
import numbers

from .modeling_matryoshka_utils import pool, warn_once

# Encoder types whose layers run in order from one `nn.ModuleList`, post-LN, with no norm after the stack: where the
# list lives inside the encoder.
LAYER_STACKS = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "camembert": "encoder.layer",
    "electra": "encoder.layer",
    "mpnet": "encoder.layer",
    "distilbert": "transformer.layer",
}


def layer_stack(encoder):
    """`(owner module, attribute name)` of the encoder's list of layers; a clear error for an unsupported type."""
    model_type = getattr(encoder.config, "model_type", None)
    path = LAYER_STACKS.get(model_type)
    if path is None:
        raise ValueError(
            f"layers= (depth truncation) supports encoders of types {sorted(LAYER_STACKS)}; this model wraps "
            f"{model_type!r}. Use layers=None (full depth)."
        )
    owner_path, _, name = path.rpartition(".")
    owner = encoder.get_submodule(owner_path)
    return owner, name


def num_layers(config):
    """The wrapped encoder's depth (`num_hidden_layers`), or None when its config does not say."""
    return getattr(config.encoder, "num_hidden_layers", None)


def check_layers(model, layers):
    """`layers` checked against the model: None (full depth) or an integer in 1..depth. A depth the model was not
    trained at (not in `config.matryoshka_layers`) works, with a warning once per depth. Returns an int or None."""
    if layers is None:
        return None
    depth = num_layers(model.config)
    trained = model.config.matryoshka_layers or ([depth] if depth else [])
    fix = f"use an integer in 1..{depth}, ideally one of the trained depths {trained} (or None for full depth)"
    if depth is None:
        raise ValueError(f"layers={layers!r}: this encoder's config has no `num_hidden_layers`; use layers=None.")
    if isinstance(layers, bool) or not isinstance(layers, numbers.Integral):
        raise ValueError(f"layers={layers!r} is not an integer; {fix}.")
    layers = int(layers)
    if not 1 <= layers <= depth:
        raise ValueError(f"layers={layers} is out of range: the encoder has {depth} layers; {fix}.")
    layer_stack(model.encoder)  # refuse unsupported encoder types before running anything
    if layers not in trained:
        warn_once(model, "layers", layers, f"layers={layers} is not one of the trained depths {trained} "
                  "(config.matryoshka_layers); its embedding works but was not trained. Prefer a trained depth.",
                  stacklevel=4)  # the caller of encode (under its inference_mode wrapper)
    return None if layers == depth else layers


@contextlib.contextmanager
def first_layers(encoder, layers):
    """Within the block, the encoder runs only its first `layers` layers (None: all of them).

    The layer list is swapped for its first `layers` entries and restored afterwards, so the skipped layers are
    never executed (a real speed-up, not a slice of a full pass). Not for concurrent use of one model from threads.
    """
    if layers is None:
        yield
        return
    owner, name = layer_stack(encoder)
    stack = getattr(owner, name)
    setattr(owner, name, stack[:layers])
    try:
        yield
    finally:
        setattr(owner, name, stack)


def pool_layers(hidden_states, attention_mask, pooling, projection, layers):
    """Full-size (not normalized) embeddings after each depth in `layers`, from one pass's `hidden_states`
    (`hidden_states[k]` is the output of layer `k`; index 0 is the embedding layer).

    Returns `{depth: (batch, dim)}`."""
    if hidden_states is None:
        raise ValueError("Layer embeddings need the encoder's hidden states; it returned none.")
    embeddings = {}
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k < len(hidden_states):
            raise ValueError(
                f"output_layer_embeddings holds {k!r}; this pass ran {len(hidden_states) - 1} layers, so depths "
                f"must be integers in 1..{len(hidden_states) - 1}."
            )
        pooled = pool(hidden_states[k], attention_mask, pooling)
        embeddings[int(k)] = projection(pooled) if projection is not None else pooled
    return embeddings


__all__ = ["LAYER_STACKS", "check_layers", "first_layers", "layer_stack", "num_layers", "pool_layers"]
