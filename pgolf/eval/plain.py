"""Plain evaluation: consecutive non-overlapping windows of seq_len tokens over the whole stream."""

from __future__ import annotations

import logging

import numpy as np
from torch import nn

from pgolf.config.eval import EvalPlainParams
from pgolf.dist import DistInfo
from pgolf.eval.accel import WindowForward, window_forward
from pgolf.eval.bpb import EvalResult, ValStream
from pgolf.eval.windows import Window, evaluate_windows

log = logging.getLogger(__name__)


def plain_windows(stream: ValStream, seq_len: int) -> list[Window]:
    """Consecutive non-overlapping windows of seq_len inputs over the whole stream."""
    last = stream.num_tokens - 1
    return [Window(s, min(s + seq_len, last), s + 1) for s in range(0, last, seq_len)]


def plain_forward(model: nn.Module, params: EvalPlainParams) -> WindowForward:
    return window_forward(model, params.compile, params.batch_size, params.seq_len)


def evaluate_plain(model: nn.Module, stream: ValStream, params: EvalPlainParams, info: DistInfo | None = None,
                   forward: WindowForward | None = None) -> tuple[EvalResult, np.ndarray]:
    """Each window scores all its targets; the result and the per-position NLL array (this rank's share, merged)."""
    windows = plain_windows(stream, params.seq_len)
    log.info("windows: %d (seq_len %d)", len(windows), params.seq_len)
    return evaluate_windows(model, stream, windows, params.batch_size, forward=forward or plain_forward(model, params), info=info)
