"""Scoring windows: which tokens a forward pass sees and which of its targets it scores.

A `Window(start, stop, score_from)` feeds tokens[start:stop] to the model; its targets are the
tokens at positions start+1..stop, of which positions score_from..stop are scored. Plain and
sliding evaluation are both lists of windows run by the same batched scorer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

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


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_windows(model: nn.Module, stream: ValStream, windows: list[Window], batch_size: int, nll: np.ndarray) -> None:
    """Run every window (longest first, right-padded batches) and write the NLL of its scored targets."""
    device = model_device(model)
    order = sorted(range(len(windows)), key=lambda i: -windows[i].length)
    tokens = torch.from_numpy(stream.tokens)
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
            targets = tokens[w.score_from : w.stop + 1].to(device)
            values = token_nll(logits[row, lo:hi], targets).cpu().numpy()
            if not np.isnan(nll[w.score_from : w.stop + 1]).all():
                raise RuntimeError(f"window {w} rescores a position")
            nll[w.score_from : w.stop + 1] = values


def evaluate_windows(model: nn.Module, stream: ValStream, windows: list[Window], batch_size: int) -> tuple[EvalResult, np.ndarray]:
    """Score the windows; return the result and the per-position NLL array."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        nll = new_nll_array(stream)
        score_windows(model, stream, windows, batch_size, nll)
    finally:
        model.train(was_training)
    return summarize(stream, nll, time.perf_counter() - t0), nll
