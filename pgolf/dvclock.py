"""Is a DVC command running in this repository? (So that nothing rewrites params.yaml under it.)

DVC 3 marks a running `dvc repro` / `dvc exp run` in two places under `.dvc/tmp/`:

- `lock`: the repository lock, a `zc.lockfile` file held with an exclusive `flock` (the file stays
  on disk after release; only the flock counts). DVC holds it for the whole command except while a
  stage's own command runs (`dvc/stage/run.py` releases it around `cmd_run`).
- `rwlock`: JSON `{"read": {path: [{pid, cmd}]}, "write": {path: {pid, cmd}}}` naming the paths a
  stage reads and writes, kept for the whole `stage.run`, stage command included
  (`dvc/stage/decorators.py`, `dvc/rwlock.py`); `exps/rwlock` is the same for experiment runs.
  Entries of dead processes are stale (DVC itself drops them), so only live pids count.

With `core.hardlink_lock` the repository lock is a `flufl.lock` instead: `lock` exists only while
held, as a hard link to a claim file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

from pgolf.errors import PgolfError


class RepoBusyError(PgolfError):
    """A DVC command is running in the repository."""


def find_dvc_dir(start: str | Path) -> Path | None:
    """The `.dvc` directory of the repository containing `start` (a file or directory), if any."""
    here = Path(start).resolve()
    for folder in [here, *here.parents]:
        if (folder / ".dvc").is_dir():
            return folder / ".dvc"
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _repo_lock_holder(lock: Path) -> str | None:
    """'pid N' (or 'a process') when another process holds the flock on `lock`, else None."""
    try:
        handle = open(lock, "rb")  # noqa: SIM115 - closed below; opening never creates the file
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            pid = handle.read(64).decode("ascii", "replace").strip()
            return f"pid {pid}" if pid.isdigit() else "a process"
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


def _hardlink_lock_holder(lock: Path) -> str | None:
    try:
        st = lock.stat()
    except FileNotFoundError:
        return None
    return "a process" if st.st_nlink >= 2 else None


def _rwlock_holders(path: Path) -> list[str]:
    """'pid N (cmd)' of every live process named in a DVC rwlock file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return [f"an unreadable {path.name} (DVC may be writing it)"]
    infos = []
    if isinstance(data, dict):
        for mode in ("write", "read"):
            for value in (data.get(mode) or {}).values():
                infos.extend(value if isinstance(value, list) else [value])
    holders = []
    for info in infos:
        if not isinstance(info, dict):
            continue
        pid = info.get("pid")
        if isinstance(pid, int) and _pid_alive(pid):
            label = f"pid {pid} ({str(info.get('cmd', '')).strip()[:60]})"
            if label not in holders:
                holders.append(label)
    return holders


def _hardlink_mode(dvc_dir: Path) -> bool:
    for name in ("config", "config.local"):
        try:
            text = (dvc_dir / name).read_text(encoding="utf-8")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "hardlink_lock" and value.strip().lower() in ("true", "1", "yes"):
                return True
    return False


def dvc_busy(start: str | Path) -> str | None:
    """A one-line reason when a DVC command holds the repository containing `start`, else None."""
    dvc_dir = find_dvc_dir(start)
    if dvc_dir is None:
        return None
    tmp = dvc_dir / "tmp"
    lock = tmp / "lock"
    holder = _hardlink_lock_holder(lock) if _hardlink_mode(dvc_dir) else _repo_lock_holder(lock)
    if holder:
        return f"{lock} is held by {holder}"
    for rwlock in (tmp / "rwlock", tmp / "exps" / "rwlock"):
        holders = _rwlock_holders(rwlock)
        if holders:
            return f"{rwlock} names running {', '.join(holders)}"
    return None


def refuse_if_busy(path: str | Path, action: str) -> None:
    """RepoBusyError (one line) when a DVC command is running in the repository of `path`."""
    reason = dvc_busy(Path(path).parent if not Path(path).is_dir() else path)
    if reason:
        raise RepoBusyError(f"{path}: not {action}: a DVC command is running ({reason}); retry when it ends")
