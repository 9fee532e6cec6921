"""Scoring windows: which tokens a forward pass sees and which of its targets it scores.

A `Window(start, stop, score_from)` feeds tokens[start:stop] to the model; its targets are the
tokens at positions start+1..stop, of which positions score_from..stop are scored. Plain and
sliding evaluation are both lists of windows run by the same batched scorer.

Beside each target's NLL the scorer can gather the log-probability of other ids per position
(`gather_ids`: the n-gram tilt's hint, the legality probe's random ids) and show every scored
distribution to a `ScoreObserver` (the legality probes). Neither changes a score. Each batch is
laid out by one vectorized gather (`window_batch`); how the model runs it (eager or compiled at
fixed shapes) and which batches this rank scores come from `pgolf.eval.accel`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from pgolf.dist import DistInfo
from pgolf.eval.accel import WindowForward, full_precision, merged, my_share
from pgolf.eval.bpb import EvalResult, ValStream, new_nll_array, summarize, token_nll
from pgolf.progress import progress

PAD_ID = 0  # right padding; a causal model's real positions never see it


@dataclass(frozen=True)
class Window:
    start: int
    stop: int
    score_from: int

    def __post_init__(self) -> None:
        if not self.start < self.score_from <= self.stop:
            raise ValueError(f"window needs start < score_from <= stop, got {self}")

    @property
    def length(self) -> int:
        return self.stop - self.start


class ScoreObserver(Protocol):
    """Sees each batch's scored positions (distinct), the logits [M, V] that scored them, their targets [M]."""

    def record(self, positions: np.ndarray, logits: Tensor, targets: Tensor) -> None: ...


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def gather_log_probs(logits: Tensor, targets: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """NLL of `targets` [T] (as `token_nll`, from one log-softmax) and log p of `ids` [T, K] (NaN where id < 0)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
    picked = logp.gather(-1, ids.clamp_min(0)).double()
    return nll, torch.where(ids >= 0, picked, torch.full_like(picked, float("nan")))


@dataclass(frozen=True)
class WindowBatch:
    """A batch laid out as the forward pass sees it: inputs [rows, width] (right-padded with PAD_ID,
    padding rows at the bottom), which of the real rows' logits score a target, and that target's position."""

    inputs: np.ndarray  # [rows, width] int64
    scored: np.ndarray  # [real rows, width] bool
    positions: np.ndarray  # [M] the target position of each scored logit, in row-major order


def window_batch(tokens: np.ndarray, start: np.ndarray, length: np.ndarray, score_from: np.ndarray,
                 rows: int, width: int) -> WindowBatch:
    """One vectorized gather of the windows (start, length, score_from) into a padded [rows, width] batch."""
    col = np.arange(width)
    at = start[:, None] + col  # input position of each column; its logits predict the token at at + 1
    inside = col < length[:, None]
    inputs = np.full((rows, width), PAD_ID, dtype=np.int64)
    inputs[: start.size] = np.where(inside, tokens[np.minimum(at, tokens.size - 1)], PAD_ID)
    scored = inside & (at + 1 >= score_from[:, None])
    return WindowBatch(inputs, scored, (at + 1)[scored])


@torch.no_grad()
def score_windows(forward: WindowForward, stream: ValStream, windows: list[Window], batch_size: int, nll: np.ndarray,
                  gather_ids: np.ndarray | None = None, gathered: np.ndarray | None = None,
                  observer: ScoreObserver | None = None, info: DistInfo | None = None) -> None:
    """Run the windows (longest first, right-padded batches; under ranks this rank's share of the
    batches) and write the NLL of their scored targets; the device's results are read back once.

    With `gather_ids` [N, K] (ids per position, -1 = none) the log p of those ids at each scored
    position is written to `gathered` [N, K] as well. A position scored twice is an error.
    """
    if (gather_ids is None) != (gathered is None):
        raise ValueError("gather_ids and gathered go together")
    device = model_device(forward.model)
    order = np.array(sorted(range(len(windows)), key=lambda i: -windows[i].length), dtype=np.int64)
    start = np.array([w.start for w in windows], dtype=np.int64)
    length = np.array([w.length for w in windows], dtype=np.int64)
    score_from = np.array([w.score_from for w in windows], dtype=np.int64)
    tokens = stream.tokens
    on_device = torch.from_numpy(tokens).to(device)
    ids = None if gather_ids is None else torch.from_numpy(gather_ids).to(device)
    seen = ~np.isnan(nll)
    done: list[tuple[np.ndarray, Tensor, Tensor | None]] = []
    batches = my_share([order[i : i + batch_size] for i in range(0, len(order), batch_size)], info)
    for batch in progress(batches, "score", unit="batch"):
        rows, width = forward.shape(batch.size, int(length[batch].max()))
        b = window_batch(tokens, start[batch], length[batch], score_from[batch], rows, width)
        if seen[b.positions].any() or np.unique(b.positions).size != b.positions.size:
            raise RuntimeError(f"windows {[windows[i] for i in batch]} rescore a position")
        seen[b.positions] = True
        logits = forward(torch.from_numpy(b.inputs).to(device))  # [rows, width, V]
        with full_precision(device):
            scored = logits[: batch.size][torch.from_numpy(b.scored).to(device)]  # [M, V]
            where = torch.from_numpy(b.positions).to(device)
            targets = on_device[where]
            if ids is None:
                done.append((b.positions, token_nll(scored, targets), None))
            else:
                done.append((b.positions, *gather_log_probs(scored, targets, ids[where])))
            if observer is not None:
                observer.record(b.positions, scored, targets)
    if done:
        positions = np.concatenate([d[0] for d in done])
        nll[positions] = torch.cat([d[1] for d in done]).cpu().numpy()
        if ids is not None:
            gathered[positions] = torch.cat([d[2] for d in done]).cpu().numpy()


@dataclass(frozen=True)
class WindowScores:
    nll: np.ndarray  # per-position NLL (nats), NaN where not scored
    gathered: np.ndarray | None  # [N, K] log p of `gather_ids`, when asked
    seconds: float


def run_windows(model: nn.Module, stream: ValStream, windows: list[Window], batch_size: int,
                gather_ids: np.ndarray | None = None, observer: ScoreObserver | None = None,
                forward: WindowForward | None = None, info: DistInfo | None = None) -> WindowScores:
    """Score the windows in eval mode (the model's mode is restored); gather and observe if asked.

    `forward`: how the model runs (default: eagerly). Under ranks (`info`) each rank scores its
    share of the batches and every rank gets the merged scores; an observer sees this rank's share only.
    """
    t0 = time.perf_counter()
    forward = forward or WindowForward(model)
    was_training = model.training
    model.eval()
    try:
        nll = new_nll_array(stream)
        gathered = None if gather_ids is None else np.full(gather_ids.shape, np.nan)
        score_windows(forward, stream, windows, batch_size, nll, gather_ids, gathered, observer, info)
        nll = merged(nll, info)
        gathered = None if gathered is None else merged(gathered, info)
    finally:
        model.train(was_training)
    return WindowScores(nll, gathered, time.perf_counter() - t0)


def evaluate_windows(model: nn.Module, stream: ValStream, windows: list[Window], batch_size: int,
                     observer: ScoreObserver | None = None, forward: WindowForward | None = None,
                     info: DistInfo | None = None) -> tuple[EvalResult, np.ndarray]:
    """Score the windows; return the result and the per-position NLL array."""
    scores = run_windows(model, stream, windows, batch_size, observer=observer, forward=forward, info=info)
    return summarize(stream, scores.nll, scores.seconds), scores.nll
