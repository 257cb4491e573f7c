"""Collectives that work whatever device a tensor lives on.

Ray Train sets up an NCCL process group on CUDA (even for one worker) and gloo on CPU. NCCL
reduces CUDA tensors only and gloo CPU tensors only: `all_reduce` of a CPU tensor in an NCCL
group raises "No backend type associated with device type cpu" (every trial of the first H200
sweep died of it). So every collective here moves its tensor to the group's device and back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def backend_device(backend: str | None = None) -> torch.device:
    """The device whose tensors a process group's backend reduces: the current CUDA device for
    `nccl`, the CPU for `gloo` (and anything else). `backend` None: the default group's, or the
    CPU when no group is initialised."""
    if backend is None:
        if not (dist.is_available() and dist.is_initialized()):
            return torch.device("cpu")
        backend = str(dist.get_backend())
    if backend.lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` (any shape, dtype and device) over every worker of the default group; returns a
    new tensor on x's device. Without an initialised group: x itself (one worker)."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    y = x.to(backend_device(), copy=True)
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)
