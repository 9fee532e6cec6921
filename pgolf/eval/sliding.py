"""Sliding-window evaluation (`eval_sliding`): long context, every token after the first scored once.

Windows of `window` tokens start every `stride` tokens; the first window scores all its targets,
each later one only those past its predecessor (its last `stride`). With doc_bounded the stream
is cut into documents first, so a context never reaches back past its document's BOS. With
stride = window the windows are exactly those of plain evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
from torch import nn

from pgolf.config.eval import EvalSlidingParams
from pgolf.dist import DistInfo
from pgolf.eval.accel import WindowForward, window_forward
from pgolf.eval.bpb import EvalResult, ValStream
from pgolf.eval.windows import Window, evaluate_windows

log = logging.getLogger(__name__)


def segments(stream: ValStream, doc_bounded: bool) -> list[tuple[int, int]]:
    """Token ranges [begin, end) scored as one context: the whole stream, or one per document.

    A document's range runs to the next document's BOS inclusive: that BOS is its last target.
    """
    n = stream.num_tokens
    if not doc_bounded:
        return [(0, n)]
    starts = stream.doc_starts()
    ends = np.append(starts[1:] + 1, n)
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e - s >= 2]


def segment_windows(begin: int, end: int, window: int, stride: int) -> Iterator[Window]:
    """Windows of `window` tokens every `stride` inside [begin, end): each target scored once.

    The first window scores all its targets; each later one the targets past its predecessor.
    """
    last = end - 1  # last target position
    stop = min(begin + window, last)
    yield Window(begin, stop, begin + 1)
    start = begin
    while stop < last:
        start += stride
        previous, stop = stop, min(start + window, last)
        yield Window(start, stop, previous + 1)


def sliding_windows(stream: ValStream, window: int, stride: int, doc_bounded: bool) -> list[Window]:
    if not 1 <= stride <= window:
        raise ValueError(f"need 1 <= stride <= window, got stride={stride}, window={window}")
    return [w for b, e in segments(stream, doc_bounded) for w in segment_windows(b, e, window, stride)]


def sliding_forward(model: nn.Module, params: EvalSlidingParams) -> WindowForward:
    return window_forward(model, params.compile, params.batch_size, params.window)


def evaluate_sliding(model: nn.Module, stream: ValStream, params: EvalSlidingParams, info: DistInfo | None = None,
                     forward: WindowForward | None = None) -> tuple[EvalResult, np.ndarray]:
    """Score the stream with sliding windows; the result and the per-position NLL array (this rank's share, merged)."""
    windows = sliding_windows(stream, params.window, params.stride, params.doc_bounded)
    log.info("windows: %d (window %d, stride %d, doc_bounded %s)", len(windows), params.window, params.stride, params.doc_bounded)
    return evaluate_windows(model, stream, windows, params.batch_size, forward=forward or sliding_forward(model, params), info=info)
