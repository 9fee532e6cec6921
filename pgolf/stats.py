"""Seed statistics for record claims: mean, sample std, one-sided Welch t-test against a reference,
and the leaderboard's tests of precedence.

The challenge asks a new record to show at p < 0.01 that it beat the previous best by >= 0.005 nats
(per token: val_loss units), over a mean of (in practice) >= 3 seeds; maintainers used a one-sided
Welch t-test (parameter-golf README, "Submission Process"). Lower bpb is better, so the alternative
hypothesis is ``mean(candidate) < mean(reference) - margin``. The chronological leaderboard
(parameter-golf PR #1902) lists a record that beats the frontier before it at p < 0.25, margin 0.
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


def welch_one_sided(candidate: SeedSummary, reference: SeedSummary, margin: float = 0.0) -> WelchResult | None:
    """One-sided Welch t-test that the candidate mean is lower than the reference's by more than
    `margin` (same units); None when it is undefined.

    Undefined when either side has fewer than 2 samples (no variance estimate) or when both
    variances are zero.
    """
    if candidate.n < 2 or reference.n < 2 or candidate.std is None or reference.std is None:
        return None
    var_c = candidate.std**2 / candidate.n
    var_r = reference.std**2 / reference.n
    if var_c + var_r == 0.0:
        return None
    t = (candidate.mean - reference.mean + margin) / math.sqrt(var_c + var_r)
    dof = (var_c + var_r) ** 2 / (var_c**2 / (candidate.n - 1) + var_r**2 / (reference.n - 1))
    return WelchResult(t=t, dof=dof, p_value=float(scipy_stats.t.cdf(t, dof)))


def bpb_to_nats_per_byte(delta_bpb: float) -> float:
    """A difference in bits per byte expressed in nats per byte."""
    return delta_bpb * LN2


def bpb_to_nats_per_token(delta_bpb: float, bytes_per_token: float) -> float:
    """A difference in bits per byte expressed in nats per token (the unit of val_loss)."""
    return delta_bpb * LN2 * bytes_per_token


def nats_per_token_to_bpb(nats: float, bytes_per_token: float) -> float:
    """A difference in nats per token expressed in bits per byte (the inverse of bpb_to_nats_per_token)."""
    return nats / (LN2 * bytes_per_token)


@dataclass(frozen=True)
class Rules:
    """The leaderboard's tests of a claim against a reference."""

    min_seeds: int = 3  # a mean over at least this many seeds
    min_gain_nats: float = 0.005  # per token, shown at p < alpha
    alpha: float = 0.01
    chronological_alpha: float = 0.25  # lower than the frontier before it, margin 0


def precedence(candidate: SeedSummary, reference: SeedSummary, bytes_per_token: float, rules: Rules = Rules()) -> dict[str, dict]:
    """Which of the leaderboard's tests the candidate meets against the reference (bpb summaries):
    `seeds` (n >= min_seeds), `record` (gain >= min_gain_nats per token at p < alpha), `chronological`
    (lower at p < chronological_alpha). Each: meets, and for the tests the margin in bpb and nats
    per token, the threshold and the Welch result (None when undefined, which meets nothing)."""
    out: dict[str, dict] = {"seeds": {"meets": candidate.n >= rules.min_seeds, "n": candidate.n, "min_seeds": rules.min_seeds}}
    tests = {"record": (rules.min_gain_nats, rules.alpha), "chronological": (0.0, rules.chronological_alpha)}
    for name, (nats, alpha) in tests.items():
        margin = nats_per_token_to_bpb(nats, bytes_per_token)
        welch = welch_one_sided(candidate, reference, margin)
        out[name] = {
            "meets": welch is not None and welch.p_value < alpha,
            "p_value": None if welch is None else welch.p_value,
            "alpha": alpha,
            "margin_bpb": margin,
            "margin_nats_per_token": nats,
            "t": None if welch is None else welch.t,
            "dof": None if welch is None else welch.dof,
        }
    return out
