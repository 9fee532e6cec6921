"""Progress of long loops: a tqdm bar on a terminal, and on a pipe or log file (a DVC stage) a
`desc: done/total (pct) elapsed eta` log line at most every `every_s` seconds, so a stage's log
shows it is alive."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger(__name__)


def progress(items: Iterable[T], desc: str, total: int | None = None, every_s: float = 10.0, unit: str = "it") -> Iterator[T]:
    """Yield `items`, reporting progress as the module docstring says."""
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, unit=unit, mininterval=1.0)
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    start = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every_s:
            last = now
            log.info("%s: %s", desc, progress_line(done, total, now - start, unit))
    if done and last != start:
        log.info("%s: %s", desc, progress_line(done, total, time.perf_counter() - start, unit))


def progress_line(done: int, total: int | None, elapsed_s: float, unit: str) -> str:
    """`120/480 batch (25.0%) 12.3 s, eta 36.9 s` (no total: `120 batch 12.3 s`)."""
    if not total:
        return f"{done} {unit} {elapsed_s:.1f} s"
    eta = elapsed_s / done * (total - done) if done else float("nan")
    return f"{done}/{total} {unit} ({100.0 * done / total:.1f}%) {elapsed_s:.1f} s, eta {eta:.1f} s"
