"""Cached (GradCache) training of a loss over the whole batch: large contrastive batches in the memory of a small one.

Contrastive losses improve with more in-batch negatives, but one encoder pass over a large batch keeps every layer's
activations until the backward pass. GradCache (Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup", RepL4NLP 2021) splits the work in three:

1. embed every mini-batch without a graph (its random state recorded, so dropout can be replayed);
2. compute the loss on the whole batch from those embeddings, detached leaves that require gradients, and
   back-propagate it to them only: the gradient of the loss with respect to every embedding (cheap: no encoder);
3. when the returned loss is back-propagated, re-embed each mini-batch with its graph under the recorded random state
   and back-propagate the cached embedding gradients through it, one mini-batch's graph alive at a time.

The parameter gradients are the full-batch ones (the chain rule, split at the embeddings); the price is a second
forward pass. `cached_loss` runs it for any loss called as `loss(embeddings, labels)` that reads nothing but the
batch's embeddings and labels, so `MatryoshkaLoss(..., mini_batch_size=32)` gets every size, every base loss (InfoNCE,
CoSENT, distillation) and DDP gathering (the base loss gathers the cached embeddings in step 2) from one mechanism.
"""

from contextlib import contextmanager, nullcontext

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

GRADCACHE_CITATION = """@inproceedings{gao2021scaling,
  title     = {Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
  author    = {Gao, Luyu and Zhang, Yunyi and Han, Jiawei and Callan, Jamie},
  booktitle = {Proceedings of the 6th Workshop on Representation Learning for NLP (RepL4NLP-2021)},
  year      = {2021},
  url       = {https://arxiv.org/abs/2101.06983}
}"""


class ReplayableState:
    """The random state (CPU and the inputs' accelerators) and autocast setting a first pass ran under, to run the
    second pass under the same ones: the same dropout masks, the same precision. The backward pass that runs the
    second pass is outside the trainer's autocast context, hence the autocast setting is carried too."""

    def __init__(self, tensors):
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)
        self.device_type = next((t.device.type for t in tensors if t.device.type != "cpu"), "cpu")
        self.autocast = torch.is_autocast_enabled(self.device_type)
        self.autocast_dtype = torch.get_autocast_dtype(self.device_type)

    @contextmanager
    def replay(self):
        """Run the block under the recorded state; the random state outside the block is left as it was."""
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            if self.devices:
                set_device_states(self.devices, self.device_states)
            with torch.autocast(self.device_type, dtype=self.autocast_dtype, enabled=self.autocast):
                yield


def split_features(features, mini_batch_size):
    """`features` (a dict of `(batch, ...)` tensors, e.g. a tokenizer's output) as mini-batches of rows. Trailing
    columns that are padding in every row of a mini-batch are dropped (they change nothing: the attention mask hides
    them and positions before them keep their ids), so short mini-batches cost what short batches cost."""
    rows = next(v.shape[0] for v in features.values() if torch.is_tensor(v))
    mask = features.get("attention_mask")
    chunks = []
    for start in range(0, rows, mini_batch_size):
        chunk = {k: v[start : start + mini_batch_size] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows
                 else v for k, v in features.items()}
        if mask is not None and mask.dim() == 2:
            used = chunk["attention_mask"].any(0).nonzero()
            length = int(used.max()) + 1 if len(used) else mask.shape[1]
            chunk = {k: v[:, :length] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[1] == mask.shape[1]
                     else v for k, v in chunk.items()}
        chunks.append(chunk)
    return chunks


def cached_loss(loss, encode, columns, labels=None, mini_batch_size=32, no_sync=None):
    """The value of `loss` on the whole batch, as a scalar whose backward pass puts the full-batch gradient on the
    parameters `encode` uses, while only one mini-batch's activations are alive at a time (GradCache).

    Args:
        loss: called as `loss(embeddings, labels)` on the whole batch's embeddings (e.g. a `MatryoshkaLoss`).
        encode: `encode(features)` -> list of `(rows, dim)` tensors for a mini-batch of one text column, e.g.
            `lambda f: [model(**f).full_embeddings]`. It is called twice per mini-batch: without gradients now, and
            with them during the backward pass, under the same random state and autocast setting.
        columns (`list[dict]`): one dict of `(batch, ...)` tensors per text column (anchor, positive, ...).
        labels: handed to `loss` unchanged.
        mini_batch_size (`int`): rows per encoder pass.
        no_sync: a DDP model's `no_sync` (optional): every mini-batch's backward but the last skips DDP's gradient
            all-reduce, as gradient accumulation does.

    `loss` receives `[column 0 output 0, column 1 output 0, ..., column 0 output 1, ...]` (each output of `encode`
    for every column in turn), the order `MatryoshkaTrainer` hands a loss its embeddings. Gradient accumulation,
    loss scaling and DDP's averaging act on the returned scalar as on any loss: its incoming gradient multiplies the
    cached ones.
    """
    if not (isinstance(mini_batch_size, int) and mini_batch_size > 0):
        raise ValueError(f"mini_batch_size={mini_batch_size!r} must be a positive number of rows, e.g. 32.")
    chunks = [split_features(features, mini_batch_size) for features in columns]
    states = [[None] * len(column) for column in chunks]
    outputs = [[None] * len(column) for column in chunks]
    with torch.no_grad():
        for c, column in enumerate(chunks):
            for i, chunk in enumerate(column):
                states[c][i] = ReplayableState([v for v in chunk.values() if torch.is_tensor(v)])
                outputs[c][i] = [o.detach() for o in encode(chunk)]
    count = len(outputs[0][0])
    leaves = [[torch.cat([out[k] for out in column]).requires_grad_() for k in range(count)] for column in outputs]
    embeddings = [leaves[c][k] for k in range(count) for c in range(len(leaves))]
    with torch.enable_grad():
        value = loss(embeddings, labels)
        grads = torch.autograd.grad(value, embeddings, allow_unused=True, materialize_grads=True)
    grads = dict(zip(((c, k) for k in range(count) for c in range(len(leaves))), grads))
    del leaves, embeddings, outputs

    def second_pass(incoming):
        steps = [(c, i) for c, column in enumerate(chunks) for i in range(len(column))]
        for n, (c, i) in enumerate(steps):
            start = i * mini_batch_size
            context = no_sync() if no_sync is not None and n < len(steps) - 1 else nullcontext()
            with context, states[c][i].replay(), torch.enable_grad():
                outs = encode(chunks[c][i])
                rows = slice(start, start + outs[0].shape[0])
                torch.autograd.backward(outs, [(grads[c, k][rows] * incoming).to(o.dtype) for k, o in enumerate(outs)])

    result = value.detach().requires_grad_()
    result.register_hook(second_pass)
    return result


__all__ = ["GRADCACHE_CITATION", "ReplayableState", "cached_loss", "split_features"]
