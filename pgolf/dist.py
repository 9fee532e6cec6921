"""Everything about processes: the only module that touches torch.distributed and the
RANK / WORLD_SIZE / LOCAL_RANK variables torchrun sets.

`init_dist` returns a frozen `DistInfo`; the rest of pgolf receives it as an argument and calls
the collective helpers here, which are no-ops for a single process.

With nproc > 1 the stage process launches torchrun as a supervised child (`run_torchrun`, through
`pgolf.procs.supervise`) and waits for it: a stop reaches every worker, and nothing outlives the
stage. torch is imported lazily, so that launching process stays light.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pgolf import procs
from pgolf.errors import PgolfError

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


# -- launching torchrun -----------------------------------------------------------------------------
_AGENT_ENTRY = "import sys; sys.path.insert(0, {root!r}); from pgolf.dist import agent_main; sys.exit(agent_main(sys.argv[1:]))"


def rendezvous_options(nproc: int, nnodes: int = 1, node_rank: int = 0, endpoint: str | None = None) -> list[str]:
    """torchrun's options for `nproc` workers here: one machine (`--standalone`, a private store), or
    node `node_rank` of `nnodes` meeting at node 0's `endpoint` (host:port) through the static
    rendezvous, which gives node r the global ranks r*nproc .. (r+1)*nproc-1."""
    if nnodes == 1:
        return ["--standalone", f"--nproc-per-node={nproc}"]
    if not endpoint:
        raise ValueError(f"nnodes ({nnodes}) > 1 needs a rendezvous endpoint host:port")
    host, _, port = endpoint.rpartition(":")
    return [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--nproc-per-node={nproc}", f"--master-addr={host}", f"--master-port={port}"]


def run_torchrun(nproc: int, argv: list[str], nnodes: int = 1, node_rank: int = 0, endpoint: str | None = None) -> None:
    """Run `torchrun <rendezvous_options> <argv>` as a supervised child; return when it is done.
    KeyboardInterrupt when stopped (a signal, or our parent died: the workers saved a resumable
    checkpoint); a PgolfError with the root failure's one-line message on failure."""
    options = rendezvous_options(nproc, nnodes, node_rank, endpoint)
    with tempfile.TemporaryDirectory(prefix="pgolf-torchrun-") as tmp:
        entry = _AGENT_ENTRY.format(root=str(Path(__file__).resolve().parents[1]))
        outcome = procs.supervise([sys.executable, "-c", entry, tmp, json.dumps(options), *argv], LAUNCH_GRACE_SECONDS)
        code = outcome.returncode
        if code == 0:
            return
        if outcome.stop_signal is not None or code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        report = Path(tmp) / "failure.json"
        message = json.loads(report.read_text())["message"] if report.is_file() else None
        if message is None:
            message = f"torchrun was killed by {signal.Signals(-code).name}" if code < 0 else f"torchrun exited with code {code}"
        raise PgolfError(message)


def agent_main(args: list[str]) -> int:
    """The supervised torchrun agent: args = the launcher's scratch directory, its rendezvous options
    (JSON list), the workers' argv.

    It stops (torchrun passes SIGTERM to the workers and waits) if the launcher dies, keeps its logs
    in the scratch directory, and reports a failure as one line in scratch/failure.json instead of
    torchrun's traceback."""
    scratch, options, argv = Path(args[0]), json.loads(args[1]), args[2:]
    with procs.ParentWatch(procs.stop_self, grace=SHUTDOWN_SECONDS + 15) as watch:
        try:
            return _agent(scratch, options, argv)
        except KeyboardInterrupt:  # a SIGINT before torchrun handles signals
            return EXIT_INTERRUPTED
        finally:
            if watch.fired:  # the launcher died: nobody else will remove its scratch directory
                shutil.rmtree(scratch, ignore_errors=True)


def _agent(scratch: Path, rendezvous: list[str], argv: list[str]) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    chatter = logging.getLogger("torch.distributed")  # the agent's own (torch gives it a handler); workers log as usual
    chatter.handlers = [logging.NullHandler()]
    chatter.propagate = False
    logs = scratch / "logs"
    options = [*rendezvous, f"--shutdown-timeout={SHUTDOWN_SECONDS}", f"--log-dir={logs}"]
    report = scratch / "failure.json"
    try:
        torchrun.run(torchrun.parse_args([*options, *argv]))
        return 0
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        if any(failure.exitcode == EXIT_INTERRUPTED for failure in exc.failures.values()):
            return EXIT_INTERRUPTED
        report.write_text(json.dumps({"message": _root_cause(exc.failures, logs)}))
        return 1
    except Exception as exc:  # torchrun itself failed (say, no free port)
        report.write_text(json.dumps({"message": f"torchrun: {type(exc).__name__}: {exc}"}))
        return 1


def _root_cause(failures: dict, logs: Path) -> str:
    """A worker killed by a signal (the OOM killer's SIGKILL, a crash: its peers then lose their
    connection; SIGTERM is torchrun stopping the others), else the earliest error a worker recorded
    (any rank's: the one torchrun saw exit first may only have lost its peer)."""
    stops = (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP)
    killed = sorted((failure.timestamp, rank) for rank, failure in failures.items() if failure.exitcode < 0 and failure.exitcode not in stops)
    if killed:
        rank = killed[0][1]
        return f"training process rank {rank} was killed by {failures[rank].signal_name()}"
    recorded = []
    for path in logs.rglob("error.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if isinstance(data.get("message"), str):
                recorded.append((float(data.get("timestamp", 0)), data["message"]))
    if recorded:
        return min(recorded)[1]
    rank, failure = min(failures.items(), key=lambda item: item[1].timestamp)
    return f"training process rank {rank} exited with code {failure.exitcode}"


@contextlib.contextmanager
def worker_stops_quietly() -> Iterator[None]:
    """In a torchrun worker: an interrupt exits 130 and a PgolfError exits 1 without a word (the
    launcher prints the one line), after `record_worker_error`; another exception is recorded too,
    then raised (its traceback shows)."""
    try:
        yield
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None
    except PgolfError as exc:
        record_worker_error(exc)
        raise SystemExit(1) from None
    except Exception as exc:
        record_worker_error(exc)
        raise


def record_worker_error(exc: Exception) -> None:
    """Under torchrun: write the error's one line where the agent reads it (TORCHELASTIC_ERROR_FILE),
    with the time; the first record wins. Call it before leaving the process group, so that a peer
    that then loses its connection records a later time."""
    path = os.environ.get(TORCHRUN_ERROR_FILE_ENV)
    if not path or Path(path).exists():
        return
    text = str(exc) if isinstance(exc, PgolfError) else f"rank {os.environ.get('RANK', '?')}: {type(exc).__name__}: {exc}"
    first_line = text.splitlines()[0] if text.strip() else type(exc).__name__
    Path(path).write_text(json.dumps({"message": first_line, "timestamp": time.time()}))  # torch reads int(timestamp)


def watch_parent() -> contextlib.AbstractContextManager:
    """While active, the death of this process's parent stops it like SIGTERM (the training loop
    saves a resumable checkpoint and exits); SIGKILL if it still runs SHUTDOWN_SECONDS later."""
    return procs.watch_parent(SHUTDOWN_SECONDS)


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
