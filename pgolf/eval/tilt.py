"""Causal n-gram tilt (`tilt`): sliding-window scores tilted towards the continuation that the
already-scored stream says is likely. Source: the token expert of PR #1420 as made causal in
PR #1145's lineage (records 2026-04-09 A2_Muon097 and PR #2135, the best record; CHALLENGE.md).

One left-to-right pass keeps counts of (hashed order-n context, next token) over the tokens
already scored. Before position t is scored, the most frequent continuation h_t of t's context
is its hint when it is confident (count >= min_count and count >= min_share x the context's
total); the count of token t enters only after t is scored. The model's distribution p becomes

    p'(x) = p(x) exp(beta [x = h_t]) / Z_t,    Z_t = 1 + p(h_t) (e^beta - 1),

so -log p'(y_t) = -log p(y_t) + log Z_t - beta [y_t = h_t]: only log p(y_t) and log p(h_t) are
needed, gathered by the sliding scorer beside the target's NLL. Hints depend on tokens only, so
all of them come from one vectorized pass over the stream before scoring (`count_trail`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pgolf.config.eval import EvalTiltParams
from pgolf.dist import DistInfo
from pgolf.eval.accel import WindowForward, summed
from pgolf.eval.bpb import EvalResult, ValStream, summarize
from pgolf.eval.legality import ProbeRun, ScoreLog, sample_positions
from pgolf.eval.sliding import sliding_forward, sliding_windows
from pgolf.eval.windows import ScoreObserver, run_windows

log = logging.getLogger(__name__)

FNV_PRIME = np.uint64(0x100000001B3)
MIX = np.uint64(0xFF51AFD7ED558CCD)  # murmur3's finalizer constant: spreads the hash over the buckets


def context_buckets(tokens: np.ndarray, order: int, buckets: int) -> np.ndarray:
    """Bucket of the context tokens[t-order:t] of each position t = order..N-1."""
    t, n = tokens.astype(np.uint64), tokens.size
    h = np.zeros(max(n - order, 0), dtype=np.uint64)
    for k in range(1, order + 1 if h.size else 1):
        h = (h ^ (t[order - k : n - k] + np.uint64(1))) * FNV_PRIME
    h ^= h >> np.uint64(33)
    h *= MIX
    h ^= h >> np.uint64(33)
    return (h % np.uint64(buckets)).astype(np.int64)


def _group_rank(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For keys sorted into runs: whether each element opens its run, and its index inside the run."""
    opens = np.ones(keys.size, dtype=bool)
    opens[1:] = keys[1:] != keys[:-1]
    firsts = np.flatnonzero(opens)
    return opens, np.arange(keys.size) - firsts[np.cumsum(opens) - 1]


@dataclass(frozen=True)
class CountTrail:
    """The counts after each update, in update order: occurrences sorted by context bucket, then position."""

    position: np.ndarray  # (M,) the position t whose token this update adds
    opens: np.ndarray  # (M,) the first update of its bucket
    leader: np.ndarray  # (M,) the most frequent token of the bucket after this update (ties: the earlier)
    leader_count: np.ndarray  # (M,) its count
    total: np.ndarray  # (M,) updates of the bucket so far, this one included


def count_trail(tokens: np.ndarray, order: int, buckets: int) -> CountTrail:
    """Every count update of the pass: (bucket of t's context, token t) for t = order..N-1."""
    bucket = context_buckets(tokens, order, buckets)
    index = np.arange(bucket.size)
    if buckets * bucket.size < 1 << 62:  # each bucket's updates in stream order: a unique key sorts 2-3x faster than a stable sort
        by_bucket = np.argsort(bucket * bucket.size + index)
    else:
        by_bucket = np.argsort(bucket, kind="stable")
    b, y = bucket[by_bucket], tokens[order:][by_bucket]
    opens, rank = _group_rank(b)
    pair = b * (int(tokens.max()) + 1) + y
    by_pair = np.argsort(pair, kind="stable")  # already sorted by bucket: fast
    pair_count = np.empty(b.size, dtype=np.int64)
    pair_count[by_pair] = _group_rank(pair[by_pair])[1] + 1  # the pair's count after this update
    offset = (np.cumsum(opens) - 1) * (b.size + 1)  # keeps the running max inside each bucket
    best = np.maximum.accumulate(pair_count + offset) - offset
    before = np.concatenate([[0], best[:-1]])
    before[opens] = 0
    takes_lead = pair_count > before  # a strictly higher count: ties keep the earlier leader
    lead_at = np.maximum.accumulate(np.where(takes_lead, np.arange(b.size), -1))
    return CountTrail(by_bucket + order, opens, y[lead_at], best, rank + 1)


@dataclass(frozen=True)
class Hints:
    token: np.ndarray  # (N,) the hinted continuation h_t, -1 where none is confident
    source: np.ndarray  # (N,) the last position whose token the counts read at t hold, -1 if none (C3)


def hints_from_trail(trail: CountTrail, num_tokens: int, read: np.ndarray, min_count: int, min_share: float) -> Hints:
    """The hint at each update's position from the counts after update `read` (aligned with the trail; -1: none)."""
    token = np.full(num_tokens, -1, dtype=np.int64)
    source = np.full(num_tokens, -1, dtype=np.int64)
    has = read >= 0
    at, r = trail.position[has], read[has]
    confident = (trail.leader_count[r] >= min_count) & (trail.leader_count[r] >= min_share * trail.total[r])
    token[at[confident]] = trail.leader[r[confident]]
    source[at] = trail.position[r]
    return Hints(token, source)


def ngram_hints(tokens: np.ndarray, order: int, buckets: int, min_count: int, min_share: float) -> Hints:
    """The hint of every position, read from the counts of the tokens before it only."""
    if tokens.size <= order:
        return Hints(np.full(tokens.size, -1, dtype=np.int64), np.full(tokens.size, -1, dtype=np.int64))
    trail = count_trail(tokens, order, buckets)
    read = np.arange(trail.position.size) - 1  # the counts after the bucket's previous update
    read[trail.opens] = -1  # a bucket's first occurrence: no counts yet
    return hints_from_trail(trail, tokens.size, read, min_count, min_share)


def tilted_nll(nll: np.ndarray, logp_hint: np.ndarray, hit: np.ndarray, beta: float) -> np.ndarray:
    """-log p'(y) = -log p(y) + log Z - beta [y = h], Z = 1 + p(h)(e^beta - 1); NaN logp_hint = no hint (unchanged)."""
    has = ~np.isnan(logp_hint)
    log_z = np.log1p(np.expm1(beta) * np.exp(np.where(has, logp_hint, -np.inf)))
    return nll + np.where(has, log_z - beta * hit, 0.0)


def tilt_log_probs(logp: Tensor, hints: Tensor, beta: float) -> Tensor:
    """The tilted distribution log p' [k, V] materialized from log p [k, V] with the closed-form Z."""
    has = (hints >= 0).unsqueeze(-1)
    boost = torch.zeros_like(logp).scatter_(-1, hints.clamp_min(0).unsqueeze(-1), beta) * has
    p_hint = logp.gather(-1, hints.clamp_min(0).unsqueeze(-1)).exp()
    log_z = torch.log1p(math.expm1(beta) * p_hint) * has
    return logp + boost - log_z


@dataclass(frozen=True)
class Tilt:
    """The tilt's two formulas: the closed-form score and the materialized distribution (a leaky variant swaps them)."""

    score: Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray] = tilted_nll
    log_probs: Callable[[Tensor, Tensor, float], Tensor] = tilt_log_probs


@dataclass(frozen=True)
class TiltPass:
    tilted: np.ndarray  # (N,) -log p'(y_t)
    nll: np.ndarray  # (N,) -log p(y_t): the sliding scores
    gathered: np.ndarray  # (N, K) log p of the hint, then of any probe ids


def tilt_pass(model: nn.Module, stream: ValStream, params: EvalTiltParams, hints: Hints, tilt: Tilt = Tilt(),
              probe_ids: np.ndarray | None = None, observer: ScoreObserver | None = None,
              forward: WindowForward | None = None, info: DistInfo | None = None) -> TiltPass:
    """The sliding-window pass gathering log p(h_t) (and log p of `probe_ids`), then the tilt: one forward
    pass gives both the sliding scores (the no-tilt baseline) and the tilted ones. Under ranks each rank
    scores its share and every rank gets the merged scores; the observer sees this rank's share."""
    ids = hints.token[:, None] if probe_ids is None else np.column_stack([hints.token, probe_ids])
    windows = sliding_windows(stream, params.window, params.stride, params.doc_bounded)
    scores = run_windows(model, stream, windows, params.batch_size, ids, observer, forward or sliding_forward(model, params), info)
    hit = (stream.tokens == hints.token).astype(np.float64)
    return TiltPass(tilt.score(scores.nll, scores.gathered[:, 0], hit, params.beta), scores.nll, scores.gathered)


def stream_hints(stream: ValStream, params: EvalTiltParams) -> Hints:
    return ngram_hints(stream.tokens, params.order, params.buckets, params.min_count, params.min_share)


def early_count_updates(hints: Hints) -> int:
    """C3: positions whose hint read counts that already held a token at or after them."""
    return int((hints.source >= np.arange(hints.source.size)).sum())


@dataclass(frozen=True)
class TiltOutcome:
    result: EvalResult  # the tilted distribution
    sliding: EvalResult  # the same pass without the tilt
    hints: int  # positions whose hint fired
    hits: int  # ... and whose target was the hint
    early_count_updates: int  # C3 over the whole stream
    score_counts: np.ndarray  # C4 over the whole stream (summed over ranks)
    hint_seconds: float = 0.0  # the hints' pass over the tokens, before any scoring


def evaluate_tilt(model: nn.Module, stream: ValStream, params: EvalTiltParams, info: DistInfo | None = None,
                  forward: WindowForward | None = None) -> TiltOutcome:
    """Hints from one causal pass over the whole stream (on every rank: cheap numpy), then the sliding pass
    with the tilt (under ranks, this rank's share of the windows; scores merged)."""
    t0 = time.perf_counter()
    hints = stream_hints(stream, params)
    t1 = time.perf_counter()
    counter = ScoreLog(stream.num_tokens, np.zeros(0, dtype=np.int64))
    out = tilt_pass(model, stream, params, hints, observer=counter, forward=forward, info=info)
    seconds = time.perf_counter() - t0
    fired = hints.token >= 0
    hits = int((stream.tokens == hints.token).sum())  # a missing hint (-1) is never a token
    log.info("tilt: hints %.1f s, scoring %.1f s; %d hints fired (%.2f%% of targets), %d hit",
             t1 - t0, seconds - (t1 - t0), int(fired.sum()), 100 * fired.mean(), hits)
    return TiltOutcome(summarize(stream, out.tilted, seconds), summarize(stream, out.nll, seconds), int(fired.sum()),
                       hits, early_count_updates(hints), summed(counter.counts, info), t1 - t0)


def tilt_probe(model: nn.Module, params: EvalTiltParams, vocab_size: int, seed: int,
               hints_of: Callable[[ValStream], Hints] | None = None, tilt: Tilt = Tilt(),
               forward: WindowForward | None = None) -> Callable[[ValStream], ProbeRun]:
    """The legality check's run of the tilt: every position's distribution fingerprinted by its hint and the
    tilted log p of a seeded random id (C1), tilted distributions materialized at sampled positions, half
    of them hinted (C2), the counts' instrumentation (C3), every scored position counted (C4)."""
    hints_of = hints_of or (lambda s: stream_hints(s, params))

    def run(stream: ValStream) -> ProbeRun:
        rng = np.random.default_rng(seed)  # the same probe ids in every run
        probe = rng.integers(0, vocab_size, size=stream.num_tokens)
        hints = hints_of(stream)
        sample = sample_positions(stream.num_tokens, params.legality_samples, rng, np.flatnonzero(hints.token >= 0))
        score_log = ScoreLog(stream.num_tokens, sample, lambda pos, logits: tilt.log_probs(
            torch.log_softmax(logits.float(), dim=-1), torch.from_numpy(hints.token[pos]).to(logits.device), params.beta))
        out = tilt_pass(model, stream, params, hints, tilt, probe, score_log, forward)
        probe_hit = (probe == hints.token).astype(np.float64)
        probe_logp = -tilt.score(-out.gathered[:, 1], out.gathered[:, 0], probe_hit, params.beta)
        context = np.column_stack([hints.token.astype(np.float64), probe_logp])
        return score_log.probe_run(out.tilted, early_count_updates(hints), context)

    return run
