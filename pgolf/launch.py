"""Starting the processes of a distributed stage: torchrun as a supervised child of the stage
process (`run_torchrun`, through `pgolf.procs.supervise`), its agent, and the workers' one-line
error reports. A stop reaches every worker, and nothing outlives the stage. Each process then
describes itself with `pgolf.dist.init_dist`.
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
from collections.abc import Iterator
from pathlib import Path

from pgolf import procs
from pgolf.dist import EXIT_INTERRUPTED, LAUNCH_GRACE_SECONDS, SHUTDOWN_SECONDS, TORCHRUN_ERROR_FILE_ENV
from pgolf.errors import PgolfError

_AGENT_ENTRY = "import sys; sys.path.insert(0, {root!r}); from pgolf.launch import agent_main; sys.exit(agent_main(sys.argv[1:]))"


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
