"""Process trees that stop together (no torch here: the launcher process stays light).

`ParentWatch` notices when this process's parent dies: the parent pid changes when a process is
reparented, and when the parent is a shell running a command that stayed between (DVC runs a
stage's cmd through `$SHELL -c`; dash does not exec it), the shell's parent is watched too. The
reaction is a callback, typically `stop_self`: SIGTERM to ourselves (the training loop saves a
resumable checkpoint and exits), then SIGKILL if that has not ended the process within a grace
period. A run meant to outlive its terminal needs a parent that does (`nohup dvc repro`, tmux).

`supervise` runs a command as a child in its own session (so a terminal's Ctrl-C reaches it once,
through us), forwards a stop (SIGINT/SIGTERM/SIGHUP, or our parent's death) to it as SIGTERM,
tracks its descendants (torchrun starts each worker in a session of its own; as a child subreaper
we inherit any it orphans) and SIGKILLs whatever is left after the grace period.

PR_SET_PDEATHSIG is not used: it fires when the parent *thread* exits, and it cannot see through a
shell that stays between. Linux /proc is read where present; elsewhere only the parent pid is
watched and descendants are not tracked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "ash", "fish", "busybox"})
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DEBOUNCE_SECONDS = 1.0  # a second stop request sooner than this is the same request, not an escalation
WATCH_INTERVAL = 0.2
TRACK_INTERVAL = 1.0  # how often the supervisor lists its child's descendants
PR_SET_CHILD_SUBREAPER = 36


# -- /proc ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: with the pid, identifies the process
    state: str  # R, S, D, Z (zombie), ...


def proc_info(pid: int) -> ProcInfo | None:
    """What /proc/<pid>/stat says, or None when the process is gone (or there is no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return ProcInfo(pid, int(fields[1]), int(fields[19]), fields[0])


def running(pid: int, start: int) -> bool:
    """The process `pid` started at `start` is still there and not a zombie."""
    info = proc_info(pid)
    return info is not None and info.start == start and info.state not in ("Z", "X")


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every descendant of `root` (whatever session it is in)."""
    children: dict[int, list[ProcInfo]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (info := proc_info(int(entry))) is not None:
                children.setdefault(info.ppid, []).append(info)
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child.pid not in found:
                found[child.pid] = child.start
                todo.append(child.pid)
    return found


def _is_shell_running_a_command(pid: int) -> bool:
    """A shell running `-c` or a script (not an interactive one): it may stay between its parent and
    us, and it outlives its parent."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    name = os.path.basename(argv[0].decode(errors="replace")).lstrip("-")
    return name in SHELLS and any(arg == b"-c" or (arg and not arg.startswith(b"-")) for arg in argv[1:])


def _ancestors_through_shells(ppid: int) -> list[tuple[int, int]]:
    """(pid, start) of the processes above `ppid` while it (and up) is a shell running a command."""
    out: list[tuple[int, int]] = []
    pid = ppid
    while _is_shell_running_a_command(pid) and (info := proc_info(pid)) is not None and info.ppid > 1:
        above = proc_info(info.ppid)
        if above is None:
            break
        out.append((above.pid, above.start))
        pid = above.pid
    return out


# -- watching the parent --------------------------------------------------------------------------
class ParentWatch:
    """Context manager: from a daemon thread, call `on_orphaned()` once if our parent dies.

    With `grace` set, SIGKILL this process if it is still inside the context `grace` seconds after
    that call (its main thread may be stuck in a collective whose peer is gone).
    """

    def __init__(self, on_orphaned: Callable[[], None], grace: float | None = None, interval: float = WATCH_INTERVAL) -> None:
        self.on_orphaned, self.grace, self.interval = on_orphaned, grace, interval
        self._done = threading.Event()
        self._ppid = 0
        self._above: list[tuple[int, int]] = []
        self.fired = False

    def orphaned(self) -> bool:
        return os.getppid() != self._ppid or any(not running(pid, start) for pid, start in self._above)

    def _watch(self) -> None:
        while not self._done.wait(self.interval):
            if self.orphaned():
                self.fired = True
                self.on_orphaned()
                if self.grace is not None and not self._done.wait(self.grace):
                    os.kill(os.getpid(), signal.SIGKILL)
                return

    def __enter__(self) -> ParentWatch:
        self._ppid = os.getppid()
        self._above = _ancestors_through_shells(self._ppid)
        threading.Thread(target=self._watch, name="pgolf-parent-watch", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()


def stop_self() -> None:
    """Ask this process to stop as if terminated (the training loop saves and exits)."""
    os.kill(os.getpid(), signal.SIGTERM)


def watch_parent(grace: float) -> contextlib.AbstractContextManager:
    """While active, our parent's death stops this process: SIGTERM now, SIGKILL after `grace` s.
    Outside the main thread (no signal handlers there) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return ParentWatch(stop_self, grace)


# -- supervising a child tree ---------------------------------------------------------------------
class _StopRequest:
    """The first stop request (a signal, or the parent's death) and whether a later one escalates."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.since: float | None = None
        self.escalated = False

    def request(self, signum: int) -> None:
        now = time.monotonic()
        if self.since is None:
            self.signum, self.since = signum, now
        elif now - self.since > DEBOUNCE_SECONDS:
            self.escalated = True

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signum)


@dataclass(frozen=True)
class Supervised:
    returncode: int  # the child's; negative: killed by that signal
    stop_signal: int | None  # the signal (SIGTERM for the parent's death) that stopped the run, if any


def _set_subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    return False


def _kill(pid: int, start: int | None, signum: int) -> None:
    if start is None or running(pid, start):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _reap(procs: dict[int, int], child: int) -> None:
    """Collect the exit status of tracked processes that were orphaned onto us (we are a subreaper)."""
    me = os.getpid()
    for pid in procs:
        info = proc_info(pid)
        if pid != child and info is not None and info.ppid == me and info.state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def _stop_handlers(stop: _StopRequest) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, stop.handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def supervise(command: list[str], grace: float, poll: float = 0.1) -> Supervised:
    """Run `command` in its own session until it and every process it started have exited.

    A stop (SIGINT/SIGTERM/SIGHUP to us, or our parent's death) is passed on to the child as
    SIGTERM; whatever of its tree still runs `grace` seconds later is SIGKILLed, as it is at once
    on a second stop request more than a second after the first.
    """
    stop = _StopRequest()
    seen: dict[int, int] = {}
    subreaper = _set_subreaper(True)
    try:
        with _stop_handlers(stop), ParentWatch(lambda: stop.request(signal.SIGTERM)):
            child = subprocess.Popen(command, start_new_session=True)
            forwarded, tracked_at = False, 0.0
            while True:
                returncode = child.poll()
                if time.monotonic() - tracked_at > TRACK_INTERVAL or returncode is not None:
                    seen.update(descendants(child.pid))
                    tracked_at = time.monotonic()
                if returncode is not None:
                    break
                if stop.since is not None and not forwarded:
                    _kill(child.pid, None, signal.SIGTERM)
                    forwarded = True
                if stop.escalated or (stop.since is not None and time.monotonic() - stop.since > grace):
                    seen.update(descendants(child.pid))
                    _kill(child.pid, None, signal.SIGKILL)
                    for pid, start in seen.items():
                        _kill(pid, start, signal.SIGKILL)
                time.sleep(poll)
            # The child is gone; what it started may not be (say it was SIGKILLed): give that the
            # rest of the grace period (orphaned workers stop themselves), then SIGKILL it.
            deadline = (stop.since if stop.since is not None else time.monotonic()) + grace
            while any(running(p, s) for p, s in seen.items()) and time.monotonic() < deadline and not stop.escalated:
                _reap(seen, child.pid)
                time.sleep(poll)
            for pid, start in seen.items():
                _kill(pid, start, signal.SIGKILL)
            settle = time.monotonic() + 2.0
            while any(running(p, s) for p, s in seen.items()) and time.monotonic() < settle:
                time.sleep(poll)
            _reap(seen, child.pid)
    finally:
        if subreaper:
            _set_subreaper(False)
    return Supervised(child.returncode, stop.signum)
