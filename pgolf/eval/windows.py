"""Scoring windows: which tokens a forward pass sees and which of its targets it scores.

A `Window(start, stop, score_from)` feeds tokens[start:stop] to the model; its targets are the
tokens at positions start+1..stop, of which positions score_from..stop are scored. Plain and
sliding evaluation are both lists of windows run by the same batched scorer.

Beside each target's NLL the scorer can gather the log-probability of other ids per position
(`gather_ids`: the n-gram tilt's hint, the legality probe's random ids) and show every scored
distribution to a `ScoreObserver` (the legality probes). Neither changes a score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from pgolf.progress import progress
from pgolf.eval.bpb import EvalResult, ValStream, new_nll_array, summarize, token_nll

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
    """Sees each scored span: its positions, the logits [T, V] that scored them, their targets [T]."""

    def record(self, positions: np.ndarray, logits: Tensor, targets: Tensor) -> None: ...


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def gather_log_probs(logits: Tensor, targets: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """NLL of `targets` [T] (as `token_nll`, from one log-softmax) and log p of `ids` [T, K] (NaN where id < 0)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
    picked = logp.gather(-1, ids.clamp_min(0)).double()
    return nll, torch.where(ids >= 0, picked, torch.full_like(picked, float("nan")))


@torch.no_grad()
def score_windows(model: nn.Module, stream: ValStream, windows: list[Window], batch_size: int, nll: np.ndarray,
                  gather_ids: np.ndarray | None = None, gathered: np.ndarray | None = None,
                  observer: ScoreObserver | None = None) -> None:
    """Run every window (longest first, right-padded batches) and write the NLL of its scored targets.

    With `gather_ids` [N, K] (ids per position, -1 = none) the log p of those ids at each scored
    position is written to `gathered` [N, K] as well.
    """
    if (gather_ids is None) != (gathered is None):
        raise ValueError("gather_ids and gathered go together")
    device = model_device(model)
    order = sorted(range(len(windows)), key=lambda i: -windows[i].length)
    tokens = torch.from_numpy(stream.tokens)
    ids = None if gather_ids is None else torch.from_numpy(gather_ids)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in progress(batches, "score", unit="batch"):
        group = [windows[i] for i in batch]
        width = group[0].length
        inputs = torch.full((len(group), width), PAD_ID, dtype=torch.long)
        for row, w in enumerate(group):
            inputs[row, : w.length] = tokens[w.start : w.stop]
        logits = model(inputs.to(device))  # [B, T, V]
        for row, w in enumerate(group):
            lo, hi = w.score_from - w.start - 1, w.length  # logits index of each scored target
            span = slice(w.score_from, w.stop + 1)
            targets = tokens[span].to(device)
            if not np.isnan(nll[span]).all():
                raise RuntimeError(f"window {w} rescores a position")
            if ids is None:
                nll[span] = token_nll(logits[row, lo:hi], targets).cpu().numpy()
            else:
                values, picked = gather_log_probs(logits[row, lo:hi], targets, ids[span].to(device))
                nll[span], gathered[span] = values.cpu().numpy(), picked.cpu().numpy()
            if observer is not None:
                observer.record(np.arange(w.score_from, w.stop + 1), logits[row, lo:hi], targets)


@dataclass(frozen=True)
class WindowScores:
    nll: np.ndarray  # per-position NLL (nats), NaN where not scored
    gathered: np.ndarray | None  # [N, K] log p of `gather_ids`, when asked
    seconds: float


def run_windows(model: nn.Module, stream: ValStream, windows: list[Window], batch_size: int,
                gather_ids: np.ndarray | None = None, observer: ScoreObserver | None = None) -> WindowScores:
    """Score the windows in eval mode (the model's mode is restored); gather and observe if asked."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        nll = new_nll_array(stream)
        gathered = None if gather_ids is None else np.full(gather_ids.shape, np.nan)
        score_windows(model, stream, windows, batch_size, nll, gather_ids, gathered, observer)
    finally:
        model.train(was_training)
    return WindowScores(nll, gathered, time.perf_counter() - t0)


def evaluate_windows(model: nn.Module, stream: ValStream, windows: list[Window], batch_size: int,
                     observer: ScoreObserver | None = None) -> tuple[EvalResult, np.ndarray]:
    """Score the windows; return the result and the per-position NLL array."""
    scores = run_windows(model, stream, windows, batch_size, observer=observer)
    return summarize(stream, scores.nll, scores.seconds), scores.nll
