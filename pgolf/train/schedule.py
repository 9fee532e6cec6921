"""Learning-rate and momentum schedules as pure functions of progress.

Progress is the larger of steps done / iterations and elapsed / max_wallclock_seconds, so with a
wall-clock cap the warmdown is timed from the clock (the baseline's behaviour) and without one
from the step count.
"""

from __future__ import annotations


def progress(step: int, elapsed_s: float, iterations: int, max_wallclock_s: float) -> float:
    """Fraction of the run done, in [0, 1]: whichever of the step budget and the clock is nearer its end."""
    by_steps = step / iterations
    by_clock = elapsed_s / max_wallclock_s if max_wallclock_s > 0 else 0.0
    return min(1.0, max(by_steps, by_clock))


def lr_scale(step: int, run_progress: float, warmup_steps: int, warmdown_fraction: float, final_fraction: float) -> float:
    """Multiplier of every base lr: linear warm-up over `warmup_steps`, flat, then a linear
    warmdown over the last `warmdown_fraction` of the run to `final_fraction`."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    start = 1.0 - warmdown_fraction
    if warmdown_fraction <= 0 or run_progress <= start:
        return warm
    remaining = (1.0 - run_progress) / warmdown_fraction  # 1 at warmdown start, 0 at the end
    return warm * (final_fraction + (1.0 - final_fraction) * remaining)


def muon_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear momentum warm-up from `start` to `end` over `warmup_steps` (baseline: 0.85 -> 0.95, 500)."""
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end
