"""The challenge's four legality conditions, checked by running an evaluation method.

(C1) causal: perturbing every token at positions >= t (BOS positions kept) leaves every score
before t unchanged, and leaves the distribution at t itself unchanged where the method exposes a
fingerprint of it (`ProbeRun.context`: log p of seeded random ids, the tilt's hint); cuts are
spread over a prefix of several documents and placed inside the method's scoring units (windows,
TTT chunks). The methods are gated on that perturbation (`PERTURBATIONS["tokens"]`); "tail"
also moves document bounds, a stricter probe that today's TTT fails (tests/test_eval_legality.py).
(C2) each scored distribution, materialized over the whole vocabulary at sampled positions, sums
to 1 and gives the recorded score as its NLL. (C3) no update (an optimizer step, an n-gram
count) uses a token before that token's score was recorded (instrumented by the method).
(C4) every target is scored exactly once and the scored bytes equal the stream's.

A method hands the check a `run(stream) -> ProbeRun`; `ScoreLog` is the observer that window
scorers give the C2/C4 evidence to. Source of the conditions: the challenge's TTT rules
(CHALLENGE.md, "Evaluation methods") and the n-gram cache normalization bug of PR #886.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.eval.bpb import ValStream

log = logging.getLogger(__name__)

CAUSAL_ATOL_NATS = 1e-6  # identical shapes give identical scores; any real leak moves them further
LOG_MASS_ATOL = 1e-4  # |log sum q| of a float32 softmax over the vocabulary
SCORE_ATOL_NATS = 1e-4  # a recorded score against -log q(target) of the materialized distribution


class LegalityError(PgolfError):
    """An evaluation method broke one of the challenge's legality conditions."""


@dataclass(frozen=True)
class ProbeRun:
    """What one run of a method on a stream shows the check."""

    nll: np.ndarray  # (N,) the score of each position (nats), NaN where not scored
    score_counts: np.ndarray  # (N,) times each position was scored
    checked_distributions: int  # scored distributions materialized over the vocabulary (C2)
    max_abs_log_mass: float  # max |log sum q| over them
    max_score_gap: float  # max |score - (-log q(target))| over them (0 when the scorer is the softmax itself)
    early_update_tokens: int  # tokens an update used before their score was recorded (C3)
    context: np.ndarray | None = None  # (N,) or (N, K): position t's distribution besides its score (C1, t included)


def log_softmax_rows(positions: np.ndarray, logits: Tensor) -> Tensor:
    """The plain scored distribution: log-softmax of the logits in float32."""
    return torch.log_softmax(logits.float(), dim=-1)


class ScoreLog:
    """A `ScoreObserver`: counts every scored position (C4) and materializes the scored
    distribution at the sampled positions (C2) with `log_probs(positions, logits) -> log q [k, V]`."""

    def __init__(self, num_tokens: int, sample: np.ndarray,
                 log_probs: Callable[[np.ndarray, Tensor], Tensor] = log_softmax_rows) -> None:
        self.counts = np.zeros(num_tokens, dtype=np.int64)
        self.wanted = np.zeros(num_tokens, dtype=bool)
        self.wanted[sample] = True
        self.log_probs = log_probs
        self.positions: list[np.ndarray] = []
        self.masses: list[np.ndarray] = []
        self.nlls: list[np.ndarray] = []

    def record(self, positions: np.ndarray, logits: Tensor, targets: Tensor) -> None:
        self.counts[positions] += 1  # a span's positions are distinct
        pick = np.flatnonzero(self.wanted[positions])
        if not pick.size:
            return
        rows = torch.from_numpy(pick).to(logits.device)
        logq = self.log_probs(positions[pick], logits[rows]).float()
        self.positions.append(positions[pick])
        self.masses.append(torch.logsumexp(logq, dim=-1).double().cpu().numpy())
        self.nlls.append(-logq.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1).double().cpu().numpy())

    def probe_run(self, nll: np.ndarray, early_update_tokens: int = 0, context: np.ndarray | None = None) -> ProbeRun:
        """The evidence, given the method's final scores (compared with the materialized NLLs)."""
        pos = np.concatenate(self.positions) if self.positions else np.zeros(0, dtype=np.int64)
        masses = np.concatenate(self.masses) if self.masses else np.zeros(0)
        gaps = np.abs(nll[pos] - np.concatenate(self.nlls)) if self.nlls else np.zeros(0)
        return ProbeRun(nll, self.counts, int(pos.size), float(np.abs(masses).max(initial=0.0)),
                        float(np.nan_to_num(gaps, nan=np.inf).max(initial=0.0)), early_update_tokens, context)


def sample_positions(num_tokens: int, count: int, rng: np.random.Generator, prefer: np.ndarray | None = None) -> np.ndarray:
    """`count` distinct target positions in [1, N): up to half from `prefer` (where a method acts), the rest at random."""
    chosen = np.zeros(0, dtype=np.int64)
    if prefer is not None and prefer.size:
        chosen = rng.choice(prefer, size=min(count // 2 or 1, prefer.size), replace=False)
    rest = np.setdiff1d(np.arange(1, num_tokens), chosen)
    extra = rng.choice(rest, size=min(count - chosen.size, rest.size), replace=False) if rest.size else rest
    return np.sort(np.concatenate([chosen, extra]).astype(np.int64))


def place_cuts(num_tokens: int, cuts: int, rng: np.random.Generator, spans: Sequence[tuple[int, int]] = ()) -> list[int]:
    """`cuts` positions spread over [2, N): one at random in each equal stratum, moved to the middle
    of the scored span (first, last) holding it (a window's or a chunk's targets) so that it falls inside it."""
    if num_tokens <= 2:
        return []
    edges = np.linspace(2, num_tokens, min(cuts, num_tokens - 2) + 1).astype(np.int64)
    raw = [int(rng.integers(lo, max(hi, lo + 1))) for lo, hi in zip(edges[:-1], edges[1:])]
    firsts = np.array(sorted(s[0] for s in spans), dtype=np.int64)
    lasts = np.array([s[1] for s in sorted(spans)], dtype=np.int64)
    placed = set()
    for p in raw:
        i = int(np.searchsorted(firsts, p, side="right")) - 1
        if i >= 0 and firsts[i] <= p <= lasts[i]:
            p = int(firsts[i] + (lasts[i] - firsts[i] + 1) // 2)
        placed.add(min(max(p, 2), num_tokens - 1))
    return sorted(placed)


def perturb_from(stream: ValStream, cut: int, vocab_size: int, rng: np.random.Generator) -> ValStream:
    """The stream with every non-BOS token at positions >= cut replaced by a different non-BOS id."""
    tokens = stream.tokens.copy()
    where = np.flatnonzero(tokens[cut:] != stream.bos_id) + cut
    others = np.delete(np.arange(vocab_size), stream.bos_id)  # sorted non-BOS ids
    pick = rng.integers(0, vocab_size - 2, size=where.size)  # among the others minus the old id
    pick += pick >= np.searchsorted(others, tokens[where])
    tokens[where] = others[pick]
    return ValStream(tokens, stream.target_bytes, stream.bos_id)


def replace_tail(stream: ValStream, cut: int, vocab_size: int, rng: np.random.Generator) -> ValStream:
    """The stream with every token at positions >= cut drawn anew, BOS included (documents end elsewhere)."""
    tokens = stream.tokens.copy()
    size = tokens.size - cut
    others = np.delete(np.arange(vocab_size), stream.bos_id)
    tokens[cut:] = others[rng.integers(0, others.size, size=size)]
    density = max(float((stream.tokens[cut:] == stream.bos_id).mean()) if size else 0.0, 1 / 64)
    tokens[cut:][rng.random(size) < density] = stream.bos_id
    return ValStream(tokens, stream.target_bytes, stream.bos_id)


PERTURBATIONS: dict[str, Callable[[ValStream, int, int, np.random.Generator], ValStream]] = {
    "tokens": perturb_from,  # what the methods are gated on: documents keep their bounds
    "tail": replace_tail,  # also moves document bounds: a stricter probe (see tests/test_eval_legality.py)
}


def scored_once(stream: ValStream, counts: np.ndarray) -> tuple[int, int]:
    """C4's evidence: positions scored other than once (position 0 never) and the bytes scored, with repeats."""
    bad = int(counts[0] != 0) + int((counts[1:] != 1).sum())
    return bad, int((stream.target_bytes * counts).sum())


@dataclass(frozen=True)
class LegalityReport:
    method: str
    checked_tokens: int
    checked_documents: int
    cut_positions: list[int]
    c1_causal: bool
    c1_max_score_change_nats: float
    c1_max_context_change: float
    c2_normalized: bool
    c2_checked_distributions: int
    c2_max_abs_log_mass: float
    c2_max_score_gap_nats: float
    c3_score_before_update: bool
    c3_early_update_tokens: int
    c4_scored_once: bool
    c4_bad_positions: int
    c4_scored_bytes: int
    c4_stream_bytes: int
    full_stream_checked: bool = False  # the method's real run: C3 and C4 over the whole stream
    full_stream_early_update_tokens: int = 0
    full_stream_bad_positions: int = 0
    passed: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def failures(self) -> list[str]:
        checks = {
            "C1 causal": self.c1_causal,
            "C2 normalized": self.c2_normalized,
            "C3 score before update": self.c3_score_before_update,
            "C4 scored once": self.c4_scored_once,
            "full stream C3/C4": self.full_stream_early_update_tokens == 0 and self.full_stream_bad_positions == 0,
        }
        return [name for name, ok in checks.items() if not ok]


def _max_change(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|; NaN against NaN is no change, NaN against a number is an infinite one."""
    same_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(same_nan, 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def check_legality(run: Callable[[ValStream], ProbeRun], stream: ValStream, vocab_size: int, cuts: int, seed: int,
                   method: str = "", spans: Sequence[tuple[int, int]] = (), perturbation: str = "tokens") -> LegalityReport:
    """Run `run` on the stream and on one perturbed copy per cut (`PERTURBATIONS`); judge C1-C4."""
    if vocab_size < 3:
        raise ValueError("the legality check needs a vocabulary of at least 3 ids")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturbation!r} (known: {', '.join(PERTURBATIONS)})")
    perturb = PERTURBATIONS[perturbation]
    rng = np.random.default_rng(seed)
    base = run(stream)
    n = stream.num_tokens
    cut_positions = place_cuts(n, cuts, rng, spans)
    score_change = context_change = 0.0
    for cut in cut_positions:
        other = run(perturb(stream, cut, vocab_size, rng))
        score_change = max(score_change, _max_change(other.nll[1:cut], base.nll[1:cut]))
        if base.context is not None:
            context_change = max(context_change, _max_change(other.context[1 : cut + 1], base.context[1 : cut + 1]))
    bad, scored_bytes = scored_once(stream, base.score_counts)
    stream_bytes = int(stream.target_bytes.sum())
    c1 = score_change <= CAUSAL_ATOL_NATS and context_change <= CAUSAL_ATOL_NATS
    c2 = base.checked_distributions > 0 and base.max_abs_log_mass <= LOG_MASS_ATOL and base.max_score_gap <= SCORE_ATOL_NATS
    c3, c4 = base.early_update_tokens == 0, bad == 0 and scored_bytes == stream_bytes
    report = LegalityReport(
        method=method,
        checked_tokens=n,
        checked_documents=int(stream.doc_starts().size),
        cut_positions=cut_positions,
        c1_causal=bool(c1),
        c1_max_score_change_nats=score_change,
        c1_max_context_change=context_change,
        c2_normalized=bool(c2),
        c2_checked_distributions=base.checked_distributions,
        c2_max_abs_log_mass=base.max_abs_log_mass,
        c2_max_score_gap_nats=base.max_score_gap,
        c3_score_before_update=bool(c3),
        c3_early_update_tokens=base.early_update_tokens,
        c4_scored_once=bool(c4),
        c4_bad_positions=bad,
        c4_scored_bytes=scored_bytes,
        c4_stream_bytes=stream_bytes,
        passed=bool(c1 and c2 and c3 and c4),
    )
    log.info("legality: %s (%s on %d tokens, %d documents, cuts %s; C1 max change %.3g nats, context %.3g; "
             "C2 %d distributions, max |log mass| %.3g, score gap %.3g; C3 early tokens %d; C4 bad positions %d)",
             "passed" if report.passed else "FAILED: " + ", ".join(report.failures()), method or "the method", n,
             report.checked_documents, cut_positions, score_change, context_change, base.checked_distributions,
             base.max_abs_log_mass, base.max_score_gap, base.early_update_tokens, bad)
    return report


def with_full_stream(report: LegalityReport, stream: ValStream, score_counts: np.ndarray, early_update_tokens: int) -> LegalityReport:
    """Add C3 and C4 of the method's real run over the whole stream (its own instrumentation, no rerun)."""
    bad, scored_bytes = scored_once(stream, score_counts)
    bad += int(scored_bytes != int(stream.target_bytes.sum()))
    ok = bad == 0 and early_update_tokens == 0
    return replace(report, full_stream_checked=True, full_stream_early_update_tokens=early_update_tokens,
                   full_stream_bad_positions=bad, passed=report.passed and ok)


def require_legal(report: LegalityReport) -> dict:
    """The report as a dict; LegalityError naming every failed check when it did not pass."""
    if not report.passed:
        raise LegalityError(f"{report.method or 'evaluation'} legality check failed: {', '.join(report.failures())} ({report.to_dict()})")
    return report.to_dict()
