"""SIGINT/SIGTERM become a request to stop at the next step boundary (then save and exit)."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType

from pgolf.procs import DEBOUNCE_SECONDS

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while active, the stop signals set `requested` instead of killing the run.

    A second signal restores the default behaviour (so a stuck run can still be stopped), unless
    it comes within DEBOUNCE_SECONDS of the first: then it is the same request arriving twice (a
    process-group signal plus the launcher passing it on, or a signal plus the parent's death).
    """

    def __init__(self) -> None:
        self.requested = False
        self._since = 0.0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.requested, self._since = True, time.monotonic()
        elif time.monotonic() - self._since > DEBOUNCE_SECONDS:
            self._restore()
            raise KeyboardInterrupt

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._restore()
