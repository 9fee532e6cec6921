"""Everything about processes: the only module that touches torch.distributed and the
RANK / WORLD_SIZE / LOCAL_RANK variables torchrun sets.

`init_dist` returns a frozen `DistInfo`; the rest of pgolf receives it as an argument and calls
the collective helpers here, which are no-ops for a single process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as tdist

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
INIT_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None for a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda:<local_rank> when CUDA is available, else cpu."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from pgolf.errors import ParamsError

        raise ParamsError("train.device: cuda requested but CUDA is not available")
    return torch.device("cuda", local_rank)


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in TORCHRUN_ENV)


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> NoReturn:
    """Replace this process by `torchrun --standalone --nproc_per_node=nproc <argv>`."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]
    os.execv(sys.executable, args)


def init_dist(device_preference: str = "auto") -> DistInfo:
    """Describe this process; under torchrun also join the process group (NCCL on CUDA, else gloo)."""
    if not launched_by_torchrun():
        return DistInfo(0, 1, 0, pick_device(device_preference), None)
    rank, world, local = (int(os.environ[key]) for key in TORCHRUN_ENV)
    return join_group(rank, world, local, device_preference, "env://")


def join_group(rank: int, world_size: int, local_rank: int, device_preference: str, init_method: str) -> DistInfo:
    """Join a process group explicitly (tests spawn processes with a file:// or tcp:// init)."""
    device = pick_device(device_preference, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=INIT_TIMEOUT)
    return DistInfo(rank, world_size, local_rank, device, backend if world_size > 1 else None)


def shutdown(info: DistInfo) -> None:
    if info.distributed and tdist.is_initialized():
        tdist.destroy_process_group()


def average_gradients(params: Iterable[torch.Tensor], info: DistInfo) -> None:
    """All-reduce the gradients of `params` to their mean over ranks, as one flat buffer."""
    if not info.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise sum of a small tensor over ranks (a copy; the input is unchanged)."""
    out = values.clone()
    if info.distributed:
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out


def max_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise max over ranks: every rank agrees on stop flags and the elapsed time."""
    out = values.clone()
    if info.distributed:
        tdist.all_reduce(out, op=tdist.ReduceOp.MAX)
    return out


def broadcast_params(params: Iterable[torch.Tensor], info: DistInfo) -> None:
    """Copy rank 0's values into every rank (identical start even if initializations differ)."""
    if info.distributed:
        for p in params:
            tdist.broadcast(p.data, src=0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        tdist.barrier()
