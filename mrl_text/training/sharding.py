"""Fully sharded data parallel training with torch's FSDP2 (`torch.distributed.fsdp.fully_shard`), applied to a
model before it is handed to `MatryoshkaTrainer`.

accelerate's FSDP (the `fsdp.yaml` launch config) shards the model itself, but only on accelerators: on CPU
processes (gloo) accelerate 1.x takes the `MULTI_CPU` path and wraps the model in DistributedDataParallel instead.
`fully_shard_model` shards it with torch's own FSDP2 on any process group, the CPU's included; `MatryoshkaTrainer`
then trains the sharded model as it is (no DDP wrap) and gathers the full weights when it saves.
"""

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn


def fully_shard_model(model, layer_classes=None):
    """Shard `model`'s parameters, gradients and optimizer state across the processes of the default process group
    with FSDP2: one unit per encoder layer (and the embeddings), then the root (the rest: projection, heads). Each
    parameter becomes a `DTensor` of which every process holds 1/world_size of the rows. In place; returns `model`.

    Args:
        model (`nn.Module`): a Matryoshka model (its encoder at `model.encoder`), on this process's device.
        layer_classes (`list[str]`, *optional*): class names of the modules that become FSDP units. Default: the
            encoder's `_no_split_modules` (transformers' blocks, e.g. `BertEmbeddings` and `BertLayer`).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "fully_shard_model needs a process group: launch with `accelerate launch --num_processes N` (or torchrun) "
            "and build the trainer's arguments (which start the process group) before sharding."
        )
    if is_fully_sharded(model):
        return model
    encoder = getattr(model, "encoder", model)
    names = set(layer_classes if layer_classes is not None else getattr(encoder, "_no_split_modules", None) or [])
    units = [module for module in encoder.modules() if type(module).__name__ in names and module is not encoder]
    if layer_classes is not None and not units:
        raise ValueError(
            f"layer_classes={sorted(names)} names no module of {type(encoder).__name__}; its block classes are "
            f"{sorted({type(module).__name__ for module in encoder.modules()})}."
        )
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    # FSDP2 allocates the gathered (unsharded) parameters at their first gather and reuses them. Gathering once here,
    # outside torch.inference_mode (under which evaluation encodes), keeps them tensors that training may write to
    # after an evaluation ("Inplace update to inference tensor outside InferenceMode" otherwise).
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.unshard()
            module.reshard()
    return model


def is_fully_sharded(model):
    """Whether FSDP2 (`fully_shard`) manages any module of `model`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, nn.Module) and any(isinstance(module, FSDPModule) for module in model.modules())


@contextmanager
def own_class(model):
    """`model` as an instance of its own class while the block runs, not of the subclass FSDP2 gives it
    (`FSDPMatryoshkaModel`): `save_pretrained` copies the source file of the model's class next to the weights and
    names it in config.json's `auto_map`, which must be mrl-text's modeling file, not torch's."""
    from torch.distributed.fsdp import FSDPModule

    sharded = type(model)
    model.__class__ = next(cls for cls in sharded.__mro__ if not issubclass(cls, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded


def full_state_dict(model):
    """The full (unsharded) state dict of an FSDP2 model, on the CPU of process 0 (empty elsewhere). Every process
    must call it: the shards are gathered collectively."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    with torch.no_grad():
        return get_model_state_dict(model, options=options)


__all__ = ["full_state_dict", "fully_shard_model", "is_fully_sharded"]
