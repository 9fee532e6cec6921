"""This process among its peers: the only module (with `pgolf.launch`, which starts them) that touches
torch.distributed and reads the RANK / WORLD_SIZE / LOCAL_RANK variables torchrun sets.

`init_dist` returns a frozen `DistInfo`; the rest of pgolf receives it as an argument and calls
the collective helpers here, which are no-ops for a single process. Launching the processes
(torchrun as a supervised child, its agent, the workers' error reports) is `pgolf.launch`: the
artifact runtime imports this module, not that one, so its counted code stays small.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TORCHRUN_ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"  # set by torchrun in each worker: where it reads a failure
INIT_TIMEOUT = timedelta(minutes=10)
EXIT_INTERRUPTED = 130  # as pgolf.stage
SHUTDOWN_SECONDS = 60  # for workers told to stop to finish the step, save and exit; then SIGKILL
LAUNCH_GRACE_SECONDS = SHUTDOWN_SECONDS + 20  # the launcher's, over the whole tree


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
    import torch

    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from pgolf.errors import ParamsError

        raise ParamsError("train.device: cuda requested but CUDA is not available")
    return torch.device("cuda", local_rank)


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in TORCHRUN_ENV)


# -- in a training process ------------------------------------------------------------------------
def init_dist(device_preference: str = "auto") -> DistInfo:
    """Describe this process; under torchrun also join the process group (NCCL on CUDA, else gloo)."""
    if not launched_by_torchrun():
        return DistInfo(0, 1, 0, pick_device(device_preference), None)
    rank, world, local = (int(os.environ[key]) for key in TORCHRUN_ENV)
    return join_group(rank, world, local, device_preference, "env://")


def join_group(rank: int, world_size: int, local_rank: int, device_preference: str, init_method: str) -> DistInfo:
    """Join a process group explicitly (tests spawn processes with a file:// or tcp:// init)."""
    import torch
    import torch.distributed as tdist

    device = pick_device(device_preference, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=INIT_TIMEOUT)
    return DistInfo(rank, world_size, local_rank, device, backend if world_size > 1 else None)


def shutdown(info: DistInfo) -> None:
    import torch.distributed as tdist

    if info.distributed and tdist.is_initialized():
        tdist.destroy_process_group()


def start_sum(flat: torch.Tensor, info: DistInfo) -> Callable[[], None]:
    """Start summing `flat` over ranks in place without waiting (an async all-reduce); returns the
    wait. For a single process the sum is `flat` itself and the wait does nothing."""
    if not info.distributed:
        return lambda: None
    import torch.distributed as tdist

    work = tdist.all_reduce(flat, op=tdist.ReduceOp.SUM, async_op=True)
    return lambda: work.wait()


def sum_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise sum of a small tensor over ranks (a copy; the input is unchanged)."""
    out = values.clone()
    if info.distributed:
        import torch.distributed as tdist

        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out


def sum_in_place(flat: torch.Tensor, info: DistInfo) -> None:
    """Sum a tensor over ranks in place (sharded Muon's update buffer); nothing for a single process."""
    if info.distributed:
        import torch.distributed as tdist

        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)


def gather_scores(values: "np.ndarray", info: DistInfo) -> "np.ndarray":
    """Merge per-position float64 scores that each rank wrote to a disjoint share (NaN elsewhere).

    Each position must be written by at most one rank; the merge is then exact (x + 0 = x): the
    result equals one process scoring everything, bit for bit. Positions no rank wrote stay NaN.
    Raises if two ranks wrote the same position. A single process gets its input back."""
    import numpy as np

    if not info.distributed:
        return values
    import torch
    import torch.distributed as tdist

    written = torch.from_numpy((~np.isnan(values)).astype(np.int64))
    merged = torch.from_numpy(np.nan_to_num(values, nan=0.0).astype(np.float64))
    tdist.all_reduce(written, op=tdist.ReduceOp.SUM)
    tdist.all_reduce(merged, op=tdist.ReduceOp.SUM)
    counts = written.numpy()
    if (counts > 1).any():
        raise RuntimeError(f"{int((counts > 1).sum())} positions were scored by more than one rank")
    out = merged.numpy()
    out[counts == 0] = np.nan
    return out


def max_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise max over ranks: every rank agrees on stop flags and the elapsed time."""
    out = values.clone()
    if info.distributed:
        import torch.distributed as tdist

        tdist.all_reduce(out, op=tdist.ReduceOp.MAX)
    return out


def broadcast_params(params: Iterable[torch.Tensor], info: DistInfo) -> None:
    """Copy rank 0's values into every rank (identical start even if initializations differ)."""
    if info.distributed:
        import torch.distributed as tdist

        for p in params:
            tdist.broadcast(p.data, src=0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as tdist

        tdist.barrier()
