"""Evaluation at accelerator speed: precision, compiled forward passes at fixed shapes, and ranks.

Source: the official train_gpt.py's eval_val in openai/parameter-golf (kept by the records, e.g.
records/track_10min_16mb/2026-03-19_SlidingWindowEval): the model under torch.autocast(bfloat16),
torch.compile(dynamic=False), each rank a share of the validation sequences, the losses
all-reduced. pgolf's fp32 eager eval was 16x slower on one H200
(shared/gpu-measurements/eval-throughput-h200.txt); bf16 + compile closes the gap.

- precision: "bf16" runs every method under `torch.autocast(bfloat16)` (`precision_context`,
  applied around the whole method); "fp32" is the reference and CPU path. The log-softmax and the
  NLL are always taken in float32 (then float64) outside autocast (`full_precision`).
- compile: the window scorer's forward pass is `torch.compile`d at fixed shapes: every batch is
  padded to `rows` windows and its width to a bucket (`padded_width`), so a whole evaluation
  runs at most BUCKETS shapes (a module that keys its own state on the width, as the rotary
  cache of pgolf.model.layers does, adds a guard per switch; past torch's recompile limit dynamo
  runs eagerly: same scores, slower). Padding is on the right of a causal model: it never reaches
  a real position. The first call at each shape (the compilation) is timed apart (`warmup_seconds`).
- ranks: rank r of a `pgolf.dist.DistInfo` scores every world_size-th batch (`my_share`); the
  per-position scores are merged exactly (`pgolf.dist.gather_scores`) and counts summed.
"auto" means bf16 and compile on CUDA, fp32 and eager elsewhere.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from pgolf.dist import DistInfo, gather_scores, sum_over_ranks

Precision = Literal["auto", "fp32", "bf16"]
CompileMode = Literal["auto", "on", "off"]
BUCKETS = 4  # widths are padded to max_width / 2^k, k < BUCKETS: at most this many compiled shapes per batch size
COMPILE_BACKEND = "inductor"

T = TypeVar("T")


def resolved_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """auto: bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def compiles(mode: CompileMode, device: torch.device) -> bool:
    """auto: compile on CUDA only."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def precision_context(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a method runs in: bf16 autocast, or nothing (fp32)."""
    if resolved_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off: where the scores (log-softmax, NLL, gathered log-probs) are computed."""
    return torch.autocast(device.type, enabled=False)


def padded_width(width: int, max_width: int, buckets: int = BUCKETS) -> int:
    """The smallest bucket max_width / 2^k (k < buckets, rounded up) holding `width`; `width` beyond max_width stays."""
    if width >= max_width:
        return width
    fitting = [w for w in (-(-max_width // 2**k) for k in range(buckets)) if w >= width]
    return min(fitting)


class WindowForward:
    """How the window scorer runs the model on a batch [rows, width] of token ids: eagerly at the
    batch's own shape, or compiled at fixed shapes [self.rows, padded_width(width)]."""

    def __init__(self, model: nn.Module, compiled: bool = False, rows: int = 1, max_width: int = 1,
                 backend: str | Callable = COMPILE_BACKEND) -> None:
        self.model, self.compiled, self.rows, self.max_width = model, compiled, rows, max_width
        self.run = torch.compile(model, dynamic=False, backend=backend) if compiled else model
        self.shapes: set[tuple[int, int]] = set()
        self.warmup_seconds = 0.0  # the first call at each shape: where torch.compile compiles

    def shape(self, rows: int, width: int) -> tuple[int, int]:
        """The input shape a batch of `rows` windows of at most `width` tokens is run at."""
        if not self.compiled:
            return rows, width
        return max(rows, self.rows), padded_width(width, self.max_width)

    def __call__(self, inputs: Tensor) -> Tensor:
        shape = (int(inputs.shape[0]), int(inputs.shape[1]))
        if not self.compiled or shape in self.shapes:
            return self.run(inputs)
        t0 = time.perf_counter()
        logits = self.run(inputs)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)
        self.warmup_seconds += time.perf_counter() - t0
        self.shapes.add(shape)
        return logits


def window_forward(model: nn.Module, compile_mode: CompileMode, rows: int, max_width: int) -> WindowForward:
    """The scorer's forward for a method's params (compile, batch_size, the window width)."""
    device = next(model.parameters()).device
    return WindowForward(model, compiles(compile_mode, device), rows, max_width, COMPILE_BACKEND)


def my_share(items: Sequence[T], info: DistInfo | None) -> Sequence[T]:
    """This rank's items: every world_size-th from its rank (all of them for one process)."""
    if info is None or not info.distributed:
        return items
    return items[info.rank :: info.world_size]


def merged(values: np.ndarray, info: DistInfo | None) -> np.ndarray:
    """Per-position float64 scores each rank wrote to its share (NaN elsewhere), merged exactly."""
    return values if info is None else gather_scores(values, info)


def summed(counts: np.ndarray, info: DistInfo | None) -> np.ndarray:
    """Element-wise sum of an integer array over ranks (score counts)."""
    if info is None or not info.distributed:
        return counts
    return sum_over_ranks(torch.from_numpy(np.ascontiguousarray(counts)), info).numpy()


@contextlib.contextmanager
def timed(into: dict[str, float], name: str, forward: WindowForward | None = None) -> Iterator[None]:
    """Add the block's seconds to into[name], less the compilation (warm-up) that `forward` did in it,
    which goes to into["compile_warmup"] (when `forward` compiles)."""
    compiled = forward is not None and forward.compiled
    t0, w0 = time.perf_counter(), forward.warmup_seconds if compiled else 0.0
    try:
        yield
    finally:
        warm = forward.warmup_seconds - w0 if compiled else 0.0
        into[name] = into.get(name, 0.0) + time.perf_counter() - t0 - warm
        if compiled:
            into["compile_warmup"] = into.get("compile_warmup", 0.0) + warm

