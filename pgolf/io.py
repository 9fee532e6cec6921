"""Atomic file output: a stage either leaves complete outputs or none (nothing half-written)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


FILE_MODE = 0o644
DIR_MODE = 0o755


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `path`; on success it replaces `path` at once.

    On an exception the temporary directory is deleted and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, DIR_MODE)  # mkdtemp creates 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists() or old.is_symlink():
        _remove(old)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Pretty JSON (UTF-8, trailing newline) written atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


TIMING_DIR = "timing"


def timing_path(metrics_path: str | Path) -> Path:
    """Where a stage's wall-clock figures go: `timing/<name>` beside its metrics file.

    Durations and throughputs change on every run, so they live apart from the metrics (which a
    seed fixes, and which dvc.lock and git record): not a DVC output, ignored by git, read by
    `pgolf summary`."""
    path = Path(metrics_path)
    return path.parent / TIMING_DIR / path.name


def write_metrics(metrics_path: str | Path, metrics: dict, timing: dict, provenance: Any = None) -> None:
    """The stage's repeatable metrics, and its timing beside them (see `timing_path`).

    With `provenance` (a `pgolf.provenance.Provenance`), its stable part goes into the metrics and
    its volatile part (the git commit) into the timing, both under "provenance" (why: pgolf.provenance)."""
    if provenance is not None:
        metrics = {**metrics, "provenance": provenance.stable}
        timing = {**timing, "provenance": provenance.volatile}
    write_json_atomic(metrics_path, metrics)
    write_json_atomic(timing_path(metrics_path), timing)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing or malformed file raises DataError naming it."""
    from pgolf.errors import DataError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found (did the upstream stage run?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {what} is not valid JSON ({exc})") from None


def read_metric(path: str | Path, key: str) -> float:
    """One number from a metrics JSON file; DataError naming the file and key when it is absent."""
    from pgolf.errors import DataError

    data = read_json(path, "metrics file")
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{path}: no numeric '{key}'")
    return float(value)
