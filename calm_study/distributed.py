"""torch.distributed helpers shared by training and by models: this worker's place, agreement, gathering.

Without a process group (one worker) each is the trivial case, so single-process code calls them unconditionally.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_finite(loss: torch.Tensor) -> bool:
    """Is the loss finite on every worker? (All workers must agree, or they would stop at different collectives.)"""
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if world()[1] > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (B, ...) from every training worker, keeping gradients (rank order), so each worker's loss sees
    the global batch. Without a process group this is the identity.

    Every worker then computes the loss of the whole gathered batch; with DDP's gradient averaging this gives exactly
    the gradients of one worker on the concatenated batch (all_gather's backward sums each worker's contribution).
    """
    if world()[1] == 1:
        return x
    return torch.cat(all_gather(x), dim=0)  # (world * B, ...)


def broadcast_from_rank0(module: torch.nn.Module) -> None:
    """Give every worker rank 0's parameters and buffers of `module` (in place); nothing without a process group."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)
