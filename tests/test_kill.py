"""Stopping a training stage stops every process it started.

Each test runs the real stage script (stages/train.py, tiny model on CPU, far more iterations than
it will get to run) inside a wrapper that stands in for `dvc repro`, waits until it is training,
then kills the wrapper, or interrupts the stage, and polls /proc until every process of the tree
is gone (bounded). With train.nproc 2 the tree is a real 2-process gloo run under torchrun, whose
workers each sit in their own session.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pgolf.procs import DEBOUNCE_SECONDS
from pgolf.train.signals import StopRequest
from train_helpers import make_shards, tiny_params

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / "stages" / "train.py"
START_SECONDS = 120  # for the run to reach its first steps (imports on a busy machine)
STOP_SECONDS = 30  # for the whole tree to stop once told
RUNNING = "step: 3 train_loss"

# Wrappers standing in for DVC, which runs the stage's cmd through a shell.
# "sh": the shell is the stage's parent (dash stays between); it is what gets killed.
# "python+sh": a python process runs `sh -c cmd` and is killed; the shell stays, orphaned.
WRAPPERS = {
    "sh": lambda cmd: ["/bin/sh", "-c", shlex.join(cmd)],
    "python+sh": lambda cmd: [
        sys.executable,
        "-c",
        "import subprocess, sys; sys.exit(subprocess.call(['/bin/sh', '-c', sys.argv[1] + '; exit $?']))",
        shlex.join(cmd),
    ],
}


def stage_command(tmp: Path, nproc: int, shards: Path | None = None) -> list[str]:
    """The train stage on tiny shards with params that would keep it busy for hours."""
    if shards is None:
        shards = make_shards(tmp / "shards")
    params = tiny_params(
        tmp,
        model=dict(layers=1, width=32, heads=2, kv_heads=1),
        iterations=1_000_000,
        grad_accum_steps=nproc,
        nproc=nproc,
        val_every=0,
        threads=1,
    )
    (tmp / "params.yaml").write_text(yaml.safe_dump({"train": params.model_dump(mode="json")}))
    out = ["--shards", str(shards), "--out", str(tmp / "out"), "--metrics", str(tmp / "metrics.json"), "--live", str(tmp / "live")]
    return [sys.executable, str(STAGE), "--params", str(tmp / "params.yaml"), *out]


# -- /proc ----------------------------------------------------------------------------------------
def stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0]


def tree(root: int) -> dict[int, int]:
    """pid -> start time of `root` and all its descendants (through any session)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := stat(int(entry))) is not None:
            parents.setdefault(info[0], []).append(int(entry))
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if (info := stat(pid)) is not None:
            found[pid] = info[1]
            todo.extend(parents.get(pid, []))
    return found


def alive(procs: dict[int, int]) -> dict[int, str]:
    """The processes still running (same pid and start time, not a zombie) -> their command line."""
    out = {}
    for pid, start in procs.items():
        info = stat(pid)
        if info is not None and info[1] == start and info[2] not in "ZX":
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
            except OSError:
                continue
    return out


def wait_gone(procs: dict[int, int], seconds: float = STOP_SECONDS) -> dict[int, str]:
    """Poll until none of `procs` is running or `seconds` pass; return the survivors."""
    deadline = time.monotonic() + seconds
    while (left := alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def wait_for(log: Path, marker: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if marker in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"the stage exited ({proc.returncode}) before {marker!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {marker!r} after {START_SECONDS} s:\n{log.read_text()[-3000:]}")


@dataclass
class Run:
    proc: subprocess.Popen
    log: Path
    seen: dict[int, int] = field(default_factory=dict)  # every process of its tree noted so far

    def training(self, nproc: int, wrapped: bool = True) -> dict[int, int]:
        """Once the stage trains: its processes (without the wrapper, if any). Under torchrun those
        are the launcher, the agent and the nproc workers, which all name the stage script."""
        wait_for(self.log, RUNNING, self.proc)
        procs = tree(self.proc.pid)
        self.seen.update(procs)
        if wrapped:
            procs.pop(self.proc.pid)
        wrappers = ("/bin/sh", f"{sys.executable} -c import subprocess")
        named = [cmd for cmd in alive(procs).values() if str(STAGE) in cmd and not cmd.startswith(wrappers)]
        assert len(named) >= (1 if nproc == 1 else nproc + 1), named
        return procs


@contextmanager
def launched(command: list[str], tmp: Path) -> Iterator[Run]:
    """Start `command` in its own session, stderr to tmp/stderr.txt; on the way out SIGKILL
    whatever of its tree is left (so a failing test leaves nothing running)."""
    log = tmp / "stderr.txt"
    with log.open("wb") as err:
        proc = subprocess.Popen(command, cwd=tmp, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    run = Run(proc, log)
    try:
        yield run
    finally:
        run.seen.update(tree(proc.pid))
        for pid in alive(run.seen):
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=STOP_SECONDS)


def resume_steps(tmp: Path) -> list[int]:
    return [json.loads(meta.read_text())["step"] for meta in (tmp / "resume").glob("*/checkpoint.json")]


def assert_stopped_and_saved(tmp: Path, procs: dict[int, int]) -> None:
    survivors = wait_gone(procs)
    assert not survivors, f"still running {STOP_SECONDS} s after the kill: {survivors}"
    steps = resume_steps(tmp)
    assert len(steps) == 1 and steps[0] >= 3, steps  # the resumable checkpoint was saved on the way out
    assert not (tmp / "metrics.json").exists() and not (tmp / "out" / "checkpoint").exists()


@pytest.mark.parametrize(
    ("nproc", "wrapper", "sig"),
    [
        (2, "sh", signal.SIGTERM),
        (2, "python+sh", signal.SIGKILL),
        (1, "sh", signal.SIGKILL),
        (1, "python+sh", signal.SIGTERM),
    ],
    ids=["nproc2-sh-TERM", "nproc2-python+sh-KILL", "nproc1-sh-KILL", "nproc1-python+sh-TERM"],
)
def test_kill_parent_stops_every_process_of_the_stage(tmp_path, nproc, wrapper, sig):
    with launched(WRAPPERS[wrapper](stage_command(tmp_path, nproc)), tmp_path) as run:
        procs = run.training(nproc)
        os.kill(run.proc.pid, sig)
        run.proc.wait(timeout=STOP_SECONDS)
        assert_stopped_and_saved(tmp_path, procs)
    assert "Traceback" not in run.log.read_text()


def problem_lines(log: Path) -> list[str]:
    """stderr without the `pgolf.<module>: ...` progress log lines."""
    return [line for line in log.read_text().splitlines() if line.strip() and not line.startswith("pgolf.")]


@pytest.mark.parametrize("nproc", [2, 1])
def test_kill_ctrl_c_exits_130_with_one_line(tmp_path, nproc):
    with launched(stage_command(tmp_path, nproc), tmp_path) as run:
        procs = run.training(nproc, wrapped=False)
        os.killpg(run.proc.pid, signal.SIGINT)  # what the terminal sends to its foreground process group
        assert run.proc.wait(timeout=STOP_SECONDS) == 130
        assert_stopped_and_saved(tmp_path, procs)
    assert problem_lines(run.log) == ["train: interrupted"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_kill_terminating_the_stage_under_torchrun_stops_all(tmp_path, sig):
    """The launcher itself is terminated (SIGTERM: it passes the stop on) or killed (SIGKILL, as by
    the OOM killer: the torchrun agent notices and stops the workers)."""
    with launched(stage_command(tmp_path, 2), tmp_path) as run:
        procs = run.training(2, wrapped=False)
        os.kill(run.proc.pid, sig)
        assert run.proc.wait(timeout=STOP_SECONDS) == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
        assert_stopped_and_saved(tmp_path, procs)
    if sig == signal.SIGTERM:
        assert problem_lines(run.log) == ["train: interrupted"]


def test_kill_worker_failure_under_torchrun_is_one_error_line(tmp_path):
    make_shards(tmp_path / "shards")
    (tmp_path / "shards" / "fineweb_val_000000.bin").unlink()  # the workers fail; the launcher does not look
    with launched(stage_command(tmp_path, 2, tmp_path / "shards"), tmp_path) as run:
        assert run.proc.wait(timeout=START_SECONDS) == 1
    lines = problem_lines(run.log)
    assert len(lines) == 1 and lines[0].startswith("train: error: ") and "val" in lines[0], run.log.read_text()[-3000:]


def test_kill_rank0_only_failure_under_torchrun_is_reported_not_the_peers_lost_connection(tmp_path):
    """Rank 0 alone fails (only it writes the curves) while rank 1 waits for it in a collective and
    then loses its connection: the one error line is rank 0's."""
    (tmp_path / "blocker").write_text("")  # a file where the curves' directory should go
    command = stage_command(tmp_path, 2)
    command[command.index("--live") + 1] = str(tmp_path / "blocker" / "live")
    with launched(command, tmp_path) as run:
        assert run.proc.wait(timeout=START_SECONDS) == 1
    last = run.log.read_text().splitlines()[-1]
    assert last.startswith("train: error: rank 0: ") and "blocker" in last, run.log.read_text()[-3000:]


def test_kill_supervise_sigkills_what_ignores_the_stop_after_the_grace_period(tmp_path):
    """A child that ignores SIGTERM, and its child in a session of its own, are SIGKILLed."""
    from pgolf.procs import supervise

    sleeper = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    parent = (
        "import os, signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"p = subprocess.Popen([sys.executable, '-c', {sleeper!r}], start_new_session=True); "
        f"open({str(tmp_path / 'pid')!r}, 'w').write(str(p.pid)); time.sleep(300)"
    )
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    outcome = supervise([sys.executable, "-c", parent], grace=1.0)
    timer.join()
    assert outcome.stop_signal == signal.SIGTERM and outcome.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10
    grandchild = int((tmp_path / "pid").read_text())
    info = stat(grandchild)
    assert info is None or info[2] == "Z", info  # gone (or a zombie until its new parent reaps it)


def test_kill_stop_request_takes_a_repeated_signal_as_one_unless_it_comes_later():
    with StopRequest() as stop:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # the same stop arriving twice (group signal + launcher)
            time.sleep(0.05)
        except KeyboardInterrupt:
            pytest.fail("a stop signal repeated at once ended the run before it could save")
        assert stop.requested
        time.sleep(DEBOUNCE_SECONDS + 0.1)
        with pytest.raises(KeyboardInterrupt):  # a second request later: stop now
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
