"""The four legality conditions of score-first TTT, checked by running it.

(C1) causal: perturbing every token at positions >= t (BOS positions kept) leaves every score
before t unchanged; (C2) each scored distribution is normalized over the whole vocabulary;
(C3) the optimizer never receives a token before that token's score was recorded (the Ledger's
instrumentation); (C4) every token after the first is scored exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from pgolf.errors import PgolfError
from pgolf.eval.bpb import ValStream
from pgolf.eval.ttt import TTTOutcome

log = logging.getLogger(__name__)

CAUSAL_ATOL_NATS = 1e-6  # identical shapes give identical scores; any real leak moves them further
LOG_MASS_ATOL = 1e-4  # |log sum p| of a float32 softmax over the vocabulary


class LegalityError(PgolfError):
    """Score-first TTT broke one of the challenge's legality conditions."""


@dataclass(frozen=True)
class LegalityReport:
    checked_tokens: int
    cut_positions: list[int]
    c1_causal: bool
    c1_max_score_change_nats: float
    c2_normalized: bool
    c2_max_abs_log_mass: float
    c3_score_before_update: bool
    c3_early_training_tokens: int
    c4_scored_once: bool
    c4_bad_positions: int
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def failures(self) -> list[str]:
        checks = {
            "C1 causal": self.c1_causal,
            "C2 normalized": self.c2_normalized,
            "C3 score before update": self.c3_score_before_update,
            "C4 scored once": self.c4_scored_once,
        }
        return [name for name, ok in checks.items() if not ok]


def perturb_from(stream: ValStream, cut: int, vocab_size: int, rng: np.random.Generator) -> ValStream:
    """The stream with every non-BOS token at positions >= cut replaced by a different non-BOS id."""
    tokens = stream.tokens.copy()
    where = np.flatnonzero(tokens[cut:] != stream.bos_id) + cut
    others = np.delete(np.arange(vocab_size), stream.bos_id)  # sorted non-BOS ids
    pick = rng.integers(0, vocab_size - 2, size=where.size)  # among the others minus the old id
    pick += pick >= np.searchsorted(others, tokens[where])
    tokens[where] = others[pick]
    return ValStream(tokens, stream.target_bytes, stream.bos_id)


def check_legality(run: Callable[[ValStream], TTTOutcome], stream: ValStream, vocab_size: int, cuts: int, seed: int) -> LegalityReport:
    """Run `run` on the stream and on `cuts` perturbed copies; judge C1-C4."""
    if vocab_size < 3:
        raise ValueError("the legality check needs a vocabulary of at least 3 ids")
    rng = np.random.default_rng(seed)
    base = run(stream)
    n = stream.num_tokens
    cut_positions = sorted(int(c) for c in rng.choice(np.arange(2, n), size=min(cuts, n - 2), replace=False)) if n > 2 else []
    max_change = 0.0
    for cut in cut_positions:
        other = run(perturb_from(stream, cut, vocab_size, rng))
        max_change = max(max_change, float(np.max(np.abs(other.nll[1:cut] - base.nll[1:cut]))))
    counts = base.ledger.score_counts
    bad = int(counts[0] != 0) + int((counts[1:] != 1).sum())
    c1, c2 = max_change <= CAUSAL_ATOL_NATS, base.ledger.max_abs_log_mass <= LOG_MASS_ATOL
    c3, c4 = base.ledger.early_training_tokens == 0, bad == 0
    report = LegalityReport(
        checked_tokens=n,
        cut_positions=cut_positions,
        c1_causal=bool(c1),
        c1_max_score_change_nats=max_change,
        c2_normalized=bool(c2),
        c2_max_abs_log_mass=base.ledger.max_abs_log_mass,
        c3_score_before_update=bool(c3),
        c3_early_training_tokens=base.ledger.early_training_tokens,
        c4_scored_once=bool(c4),
        c4_bad_positions=bad,
        passed=bool(c1 and c2 and c3 and c4),
    )
    log.info("legality: %s (C1 max change %.3g nats, C2 max |log mass| %.3g, C3 early tokens %d, C4 bad positions %d)",
             "passed" if report.passed else "FAILED: " + ", ".join(report.failures()),
             max_change, report.c2_max_abs_log_mass, report.c3_early_training_tokens, bad)
    return report
