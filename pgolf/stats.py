"""Seed statistics for record claims: mean, sample std, one-sided Welch t-test against a reference.

The challenge asks a new record to beat the previous best by >= 0.005 nats with p < 0.01 over seeds;
maintainers used a one-sided Welch t-test. Lower bpb is better, so the alternative hypothesis is
``mean(candidate) < mean(reference)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

LN2 = math.log(2.0)


@dataclass(frozen=True)
class SeedSummary:
    n: int
    mean: float
    std: float | None  # sample standard deviation (ddof=1); None for a single seed


@dataclass(frozen=True)
class WelchResult:
    t: float
    dof: float
    p_value: float  # one-sided: P(T <= t) under equal means, small when the candidate is lower


def summarize(values: Sequence[float]) -> SeedSummary:
    if not values:
        raise ValueError("summarize needs at least one value")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"non-finite value among {list(values)}")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return SeedSummary(n=n, mean=mean, std=std)


def welch_one_sided(candidate: SeedSummary, reference: SeedSummary) -> WelchResult | None:
    """One-sided Welch t-test that the candidate mean is lower; None when it is undefined.

    Undefined when either side has fewer than 2 samples (no variance estimate) or when both
    variances are zero.
    """
    if candidate.n < 2 or reference.n < 2 or candidate.std is None or reference.std is None:
        return None
    var_c = candidate.std**2 / candidate.n
    var_r = reference.std**2 / reference.n
    if var_c + var_r == 0.0:
        return None
    t = (candidate.mean - reference.mean) / math.sqrt(var_c + var_r)
    dof = (var_c + var_r) ** 2 / (var_c**2 / (candidate.n - 1) + var_r**2 / (reference.n - 1))
    return WelchResult(t=t, dof=dof, p_value=float(scipy_stats.t.cdf(t, dof)))


def bpb_to_nats_per_byte(delta_bpb: float) -> float:
    """A difference in bits per byte expressed in nats per byte."""
    return delta_bpb * LN2


def bpb_to_nats_per_token(delta_bpb: float, bytes_per_token: float) -> float:
    """A difference in bits per byte expressed in nats per token (the unit of val_loss)."""
    return delta_bpb * LN2 * bytes_per_token
