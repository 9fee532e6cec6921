"""Learning-rate, momentum, sequence-length and recurrence schedules as pure functions of progress.

Progress is the larger of steps done / iterations and elapsed / max_wallclock_seconds, so with a
wall-clock cap the warmdown is timed from the clock (the baseline's behaviour) and without one
from the step count. `settings_at` gathers what one optimizer step needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pgolf.config.train import TrainParams

# Warmdown shapes: (remaining in [0, 1], floor) -> lr multiplier. linear: pgolf's interpolation to
# the floor; clamp: the records' MIN_LR (PR #1787), a decay toward 0 held at the floor.
WARMDOWN_SHAPES: dict[str, Callable[[float, float], float]] = {
    "linear": lambda remaining, floor: floor + (1.0 - floor) * remaining,
    "clamp": lambda remaining, floor: max(remaining, floor),
}


def progress(step: int, elapsed_s: float, iterations: int, max_wallclock_s: float) -> float:
    """Fraction of the run done, in [0, 1]: whichever of the step budget and the clock is nearer its end."""
    by_steps = step / iterations
    by_clock = elapsed_s / max_wallclock_s if max_wallclock_s > 0 else 0.0
    return min(1.0, max(by_steps, by_clock))


def lr_scale(
    step: int, run_progress: float, warmup_steps: int, warmdown_fraction: float, final_fraction: float, final_mode: str = "linear"
) -> float:
    """Multiplier of every base lr: linear warm-up over `warmup_steps`, flat, then a warmdown over
    the last `warmdown_fraction` of the run to `final_fraction`, shaped by `final_mode` (WARMDOWN_SHAPES)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    start = 1.0 - warmdown_fraction
    if warmdown_fraction <= 0 or run_progress <= start:
        return warm
    remaining = (1.0 - run_progress) / warmdown_fraction  # 1 at warmdown start, 0 at the end
    return warm * WARMDOWN_SHAPES[final_mode](remaining, final_fraction)


def muon_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear momentum warm-up from `start` to `end` over `warmup_steps` (baseline: 0.85 -> 0.95, 500)."""
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end


def seq_len_at(run_progress: float, seq_len: int, schedule: Sequence[Sequence[float]]) -> int:
    """Training length at `run_progress`: that of the last [progress, seq_len] point reached
    (points in increasing progress), `seq_len` before the first (progressive context, #2014)."""
    length = seq_len
    for at, scheduled in schedule:
        if run_progress < at:
            break
        length = int(scheduled)
    return length


def recurrence_on(run_progress: float, from_progress: float) -> bool:
    """Depth recurrence is trained from `from_progress` of the run on (records: 0.35)."""
    return run_progress >= from_progress


@dataclass(frozen=True)
class StepSettings:
    """What one optimizer step runs with."""

    progress: float
    lr_scale: float
    momentum: float
    seq_len: int
    recurrence: bool | None  # None: the model has no depth recurrence


def settings_at(params: TrainParams, step: int, elapsed_s: float) -> StepSettings:
    """The schedules of `params` before optimizer step `step` (0-based) after `elapsed_s` of training."""
    done = progress(step, elapsed_s, params.iterations, params.max_wallclock_seconds)
    m = params.optim.matrix
    return StepSettings(
        progress=done,
        lr_scale=lr_scale(step, done, params.lr_warmup_steps, params.warmdown_fraction, params.final_lr_fraction, params.final_lr_mode),
        momentum=muon_momentum(step, m.momentum_warmup_start, m.momentum, m.momentum_warmup_steps),
        seq_len=seq_len_at(done, params.seq_len, params.seq_len_schedule),
        recurrence=recurrence_on(done, params.model.recur_from_progress) if params.model.recur_loops > 0 else None,
    )
