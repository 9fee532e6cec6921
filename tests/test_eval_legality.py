"""Legality on every evaluation method: the real methods pass C1-C4 on a prefix of several documents,
and a deliberately leaky variant of each is caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import BOS, VOCAB, TinyCausalLM, random_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pgolf.config.eval import EvalPlainParams, EvalSlidingParams, EvalTiltParams, EvalTTTParams
from pgolf.eval.bpb import ValStream
from pgolf.eval.legality import (LegalityError, ScoreLog, check_legality, place_cuts, replace_tail, sample_positions)
from pgolf.eval.methods import METHODS, spans_of, ttt_chunks, ttt_probe, window_probe
from pgolf.eval.plain import plain_windows
from pgolf.eval.sliding import sliding_windows
from pgolf.eval.tilt import Hints, Tilt, count_trail, hints_from_trail, stream_hints, tilt_probe
from pgolf.eval.ttt import document_chunks
from test_eval_ttt import AdaptThenScore  # the deliberately leaky runner (adapts before it scores)

torch.set_num_threads(1)

DOCS = [300, 40, 700, 15, 500, 200, 900, 80, 260]  # 3,004 tokens in 9 documents


@pytest.fixture(scope="module")
def stream() -> ValStream:
    return random_stream(DOCS, seed=11)


LEGALITY = {"legality_tokens": 2500, "legality_cuts": 4, "legality_samples": 32}
PARAMS = {
    "plain": EvalPlainParams(seq_len=64, batch_size=16, **LEGALITY),
    "sliding": EvalSlidingParams(window=32, stride=8, batch_size=16, **LEGALITY),
    "sliding_bounded": EvalSlidingParams(window=32, stride=8, batch_size=16, doc_bounded=True, **LEGALITY),
    "tilt": EvalTiltParams(window=32, stride=8, batch_size=16, order=1, min_count=2, min_share=0.1, beta=1.5, **LEGALITY),
    "ttt": EvalTTTParams(chunk_tokens=16, window=32, batch_docs=4, lr=0.05, lora_rank=2, lora_targets="c_q|c_v",
                         legality_tokens=2500, legality_cuts=4),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_every_method_passes_and_reports_its_legality(stream: ValStream, name: str) -> None:
    out = METHODS[name.split("_")[0]].evaluate(TinyCausalLM(), stream, PARAMS[name])
    report = out.extra["legality"]
    assert report["passed"] and report["full_stream_checked"], report
    assert report["checked_tokens"] == 2500 and report["checked_documents"] >= 5  # the probe crosses documents
    assert report["c1_max_score_change_nats"] == 0.0 and report["c1_max_context_change"] == 0.0
    assert report["c2_checked_distributions"] >= 32 and report["c2_max_abs_log_mass"] < 1e-5
    assert report["c4_scored_bytes"] == report["c4_stream_bytes"] > 0
    assert len(report["cut_positions"]) == 4 and max(report["cut_positions"]) > 1800  # spread over the prefix


@given(n=st.integers(3, 5000), cuts=st.integers(1, 12), span=st.integers(1, 60), seed=st.integers(0, 99))
@settings(max_examples=200, deadline=None)
def test_cuts_are_one_per_stratum_and_fall_inside_a_scored_span(n: int, cuts: int, span: int, seed: int) -> None:
    free = place_cuts(n, cuts, np.random.default_rng(seed))
    edges = np.linspace(2, n, min(cuts, n - 2) + 1).astype(int)  # equal strata of whole positions
    assert len(free) == min(cuts, n - 2) and all(lo <= c < hi for c, lo, hi in zip(free, edges[:-1], edges[1:]))
    spans = [(first, min(first + span - 1, n - 1)) for first in range(1, n, span)]
    placed = place_cuts(n, cuts, np.random.default_rng(seed), spans)
    assert placed == sorted(set(placed)) and all(2 <= c < n for c in placed)
    for c in placed:
        first, last = next(s for s in spans if s[0] <= c <= s[1])
        assert c > first or last == first  # strictly inside: targets of its span lie on both sides of the cut


def test_samples_are_distinct_targets_and_favour_the_preferred() -> None:
    prefer = np.arange(100, 110)
    picked = sample_positions(1000, 16, np.random.default_rng(0), prefer)
    assert picked.size == 16 and np.unique(picked).size == 16 and picked.min() >= 1
    assert np.isin(prefer, picked).sum() == 8


class PeekAhead(nn.Module):
    """Deliberately leaky scorer: each target is scored by the distribution made after seeing it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = self.model(idx)
        return torch.cat([out[:, 1:], out[:, -1:]], dim=1)


class LooksBack(nn.Module):
    """Deliberately leaky model: every position also sees the tokens after it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx) + 0.5 * self.model(idx.flip(1)).flip(1)


def test_a_sliding_scorer_peeking_one_token_ahead_is_caught(stream: ValStream) -> None:
    """Its scores before a cut never change: only the fingerprint of the distribution at the cut does."""
    with pytest.raises(LegalityError, match="sliding legality check failed: C1 causal"):
        METHODS["sliding"].evaluate(PeekAhead(TinyCausalLM()), stream, PARAMS["sliding"])
    p = PARAMS["sliding"]
    run = window_probe(PeekAhead(TinyCausalLM()), lambda s: sliding_windows(s, 32, 8, False), 16, 32, VOCAB)
    report = check_legality(run, stream.prefix(2500), VOCAB, p.legality_cuts, 0, "sliding")
    assert report.c1_max_score_change_nats == 0.0 and report.c1_max_context_change > 0.1
    assert report.c2_normalized and report.c3_score_before_update and report.c4_scored_once


def test_a_non_causal_model_is_caught_by_plain_evaluation(stream: ValStream) -> None:
    with pytest.raises(LegalityError, match="plain legality check failed: C1 causal"):
        METHODS["plain"].evaluate(LooksBack(TinyCausalLM()), stream, PARAMS["plain"])


def test_windows_that_miss_targets_fail_c4(stream: ValStream) -> None:
    run = window_probe(TinyCausalLM(), lambda s: plain_windows(s, 64)[:-2], 16, 8, VOCAB)
    report = check_legality(run, stream.prefix(600), VOCAB, 2, 0, "plain")
    assert not report.c4_scored_once and report.c4_bad_positions > 0 and report.c1_causal and not report.passed


def counts_before_scoring(params: EvalTiltParams):
    """Deliberately leaky hints: each position reads counts that already hold its own token."""

    def hints_of(s: ValStream) -> Hints:
        trail = count_trail(s.tokens, params.order, params.buckets)
        return hints_from_trail(trail, s.num_tokens, np.arange(trail.position.size), params.min_count, params.min_share)

    return hints_of


def test_a_tilt_updating_counts_before_scoring_is_caught(stream: ValStream) -> None:
    p = PARAMS["tilt"]
    prefix = stream.prefix(2500)
    leaky = check_legality(tilt_probe(TinyCausalLM(), p, VOCAB, 0, counts_before_scoring(p)), prefix, VOCAB, 4, 0, "tilt")
    # every hinted position read its own token (C1 sees it only where that token flips the leader at a cut)
    assert not leaky.c3_score_before_update and leaky.c3_early_update_tokens > 1000 and not leaky.passed
    honest = check_legality(tilt_probe(TinyCausalLM(), p, VOCAB, 0), prefix, VOCAB, 4, 0, "tilt")
    assert honest.passed and honest.c3_early_update_tokens == 0


def _boost(logp: torch.Tensor, hints: torch.Tensor, beta: float) -> torch.Tensor:
    boost = torch.zeros_like(logp).scatter_(-1, hints.clamp_min(0)[:, None], beta)
    return logp + boost * (hints >= 0)[:, None]


@pytest.mark.parametrize(
    ("tilt", "what"),
    [
        (Tilt(lambda nll, lh, hit, beta: nll - beta * hit, _boost), "mass"),  # no Z anywhere
        (Tilt(lambda nll, lh, hit, beta: nll - beta * hit), "score"),  # the closed form forgets Z
    ],
)
def test_an_unnormalized_tilt_is_caught(stream: ValStream, tilt: Tilt, what: str) -> None:
    p = PARAMS["tilt"]
    report = check_legality(tilt_probe(TinyCausalLM(), p, VOCAB, 0, tilt=tilt), stream.prefix(2500), VOCAB, 2, 0, "tilt")
    assert not report.c2_normalized and not report.passed
    assert report.c3_score_before_update and report.c4_scored_once
    if what == "mass":
        assert report.c2_max_abs_log_mass > 0.1
    else:
        assert report.c2_max_abs_log_mass < 1e-5 and report.c2_max_score_gap_nats > 0.1




@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ttt_training_before_scoring_is_caught_by_any_single_cut(stream: ValStream, seed: int) -> None:
    """Cuts fall inside chunks, where a leaky TTT's earlier targets saw the chunk's later tokens."""
    p = PARAMS["ttt"]
    prefix = stream.prefix(1200)
    report = check_legality(ttt_probe(TinyCausalLM(), p, AdaptThenScore), prefix, VOCAB, 1, seed, "ttt",
                            spans_of(ttt_chunks(prefix, p)))
    assert not report.c1_causal and not report.c3_score_before_update and not report.passed


def test_a_failed_probe_fails_the_ttt_method(stream: ValStream, monkeypatch: pytest.MonkeyPatch) -> None:
    import pgolf.eval.methods as methods

    monkeypatch.setattr(methods, "ttt_probe", lambda model, p: ttt_probe(model, p, AdaptThenScore))
    with pytest.raises(LegalityError, match="ttt legality check failed: C1 causal, C3 score before update"):
        METHODS["ttt"].evaluate(TinyCausalLM(), stream, PARAMS["ttt"])


def test_replaced_tails_move_document_bounds(stream: ValStream) -> None:
    other = replace_tail(stream, 1000, VOCAB, np.random.default_rng(0))
    assert np.array_equal(other.tokens[:1000], stream.tokens[:1000])
    assert not np.array_equal(other.tokens[1000:] == BOS, stream.tokens[1000:] == BOS)
    assert (other.tokens[1000:] != stream.tokens[1000:]).mean() > 0.8


@pytest.mark.parametrize("name", ["sliding", "sliding_bounded", "tilt"])
def test_window_methods_pass_even_when_the_tail_moves_document_bounds(stream: ValStream, name: str) -> None:
    p = PARAMS[name].model_copy(update={"batch_size": 1})  # one window per forward: no batching noise
    prefix = stream.prefix(1500)
    run = (tilt_probe(TinyCausalLM(), p, VOCAB, 0) if name == "tilt"
           else window_probe(TinyCausalLM(), lambda s: sliding_windows(s, p.window, p.stride, p.doc_bounded), 1, 8, VOCAB))
    report = check_legality(run, prefix, VOCAB, 4, 0, name, perturbation="tail")
    assert report.passed and report.c1_max_score_change_nats == 0.0


def test_ttt_passes_when_the_tail_moves_document_bounds(stream: ValStream) -> None:
    p = PARAMS["ttt"]
    prefix = stream.prefix(1500)
    report = check_legality(ttt_probe(TinyCausalLM(), p), prefix, VOCAB, 4, 0, "ttt", spans_of(ttt_chunks(prefix, p)),
                            perturbation="tail")
    assert report.c1_causal


def test_a_last_chunks_context_does_not_depend_on_where_its_document_ends() -> None:
    """document_chunks once started the last chunk's context from the document's end: moving the
    next BOS moved the context of tokens scored before it (found by the tail probe above)."""
    for end in range(41, 49):  # the last chunk holds 1..8 targets
        chunks = document_chunks(0, end, 10, 16)
        assert chunks[-1].start == max(0, chunks[-1].score_from + 10 - 1 - 16)
        assert all(c.length <= 16 for c in chunks)
    assert document_chunks(0, 45, 10, 16)[-1].start == document_chunks(0, 49, 10, 16)[-1].start


def test_score_log_counts_and_materializes_only_the_sampled_positions() -> None:
    log = ScoreLog(10, np.array([3, 7]))
    logits = torch.randn(4, VOCAB)
    log.record(np.array([2, 3, 4, 5]), logits, torch.tensor([1, 2, 3, 4]))
    log.record(np.array([3]), logits[:1], torch.tensor([0]))
    nll = np.full(10, np.nan)
    nll[3] = -float(torch.log_softmax(logits[1], -1)[2])
    run = log.probe_run(nll)
    assert run.score_counts.tolist() == [0, 0, 1, 2, 1, 1, 0, 0, 0, 0]
    assert run.checked_distributions == 2 and run.max_abs_log_mass < 1e-6
    assert run.max_score_gap > 0.0  # position 3's second score disagrees with the NLL recorded


def test_tilt_probe_uses_the_streams_own_hints(stream: ValStream) -> None:
    p = PARAMS["tilt"]
    hints = stream_hints(stream.prefix(2500), p)
    assert (hints.token >= 0).sum() > 100  # the probe's C2 samples have hinted positions to favour
