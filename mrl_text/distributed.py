"""Gathering across processes with gradients, so in-batch negatives span the global batch under DDP.

Used by the contrastive losses of `mrl_text.losses.contrastive` and `mrl_text.losses.image_text`.
"""

import torch
import torch.distributed as dist


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's rows (equal row counts)."""

    @staticmethod
    def forward(ctx, tensor):
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # all_reduce rather than reduce_scatter: gloo (CPU) has no reduce_scatter
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor):
    """Concatenate `tensor` from every process along dim 0, keeping gradients (identity outside DDP).

    The backward pass sends each process the gradient of every process's loss with respect to its own rows, so
    in-batch negatives span the global batch and DDP's gradient averaging gives the global-batch gradient.
    Every process must pass the same number of rows (accelerate's `even_batches`, the default, ensures it).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def in_batch_targets(batch_size, device, gather_across_devices=True):
    """`(gather, targets)` for in-batch-negative losses: `gather` concatenates a tensor over every process (with
    gradients; the identity outside DDP or without `gather_across_devices`), `targets[i]` is the index of this
    process's row `i` in the gathered candidates (equal local batch sizes, as accelerate's `even_batches` ensures)."""
    distributed = gather_across_devices and dist.is_available() and dist.is_initialized()
    offset = dist.get_rank() * batch_size if distributed else 0
    return (gather_with_grad if distributed else (lambda t: t)), torch.arange(batch_size, device=device) + offset


__all__ = ["gather_with_grad", "in_batch_targets"]
