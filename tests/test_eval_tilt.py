"""The causal n-gram tilt: hints against an online counter, the closed form against the materialized
distribution, beta = 0 against sliding, and the method through the registry."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from eval_helpers import BOS, VOCAB, TinyCausalLM, byte_table, random_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.base import validate_section
from pgolf.config.eval import EvalSlidingParams, EvalTiltParams
from pgolf.errors import ParamsError
from pgolf.eval.bpb import stream_from_tokens, token_nll
from pgolf.eval.methods import METHODS
from pgolf.eval.sliding import evaluate_sliding, sliding_windows
from pgolf.eval.tilt import context_buckets, evaluate_tilt, ngram_hints, tilt_log_probs, tilted_nll
from pgolf.eval.windows import gather_log_probs, run_windows

torch.set_num_threads(1)


def online_hints(tokens: np.ndarray, order: int, buckets: int, min_count: int, min_share: float) -> np.ndarray:
    """The definition, one token at a time: read the bucket's leader, then add token t to the counts."""
    bucket = context_buckets(tokens, order, buckets)
    counts: dict[int, Counter] = defaultdict(Counter)
    leader: dict[int, tuple[int, int]] = {}
    hints = np.full(tokens.size, -1)
    for i, t in enumerate(range(order, tokens.size)):
        b, y = int(bucket[i]), int(tokens[t])
        if b in leader:
            token, count = leader[b]
            if count >= min_count and count >= min_share * sum(counts[b].values()):
                hints[t] = token
        counts[b][y] += 1
        if b not in leader or leader[b][0] == y or counts[b][y] > leader[b][1]:
            leader[b] = (y, counts[b][y])
    return hints


token_arrays = st.lists(st.integers(0, 5), min_size=1, max_size=200).map(lambda xs: np.array(xs, dtype=np.int64))


@given(tokens=token_arrays, order=st.integers(1, 4), buckets=st.integers(1, 40), min_count=st.integers(1, 4),
       min_share=st.floats(0.0, 1.0))
@settings(max_examples=300, deadline=None)
def test_vectorized_hints_equal_the_online_counter(tokens, order, buckets, min_count, min_share) -> None:
    hints = ngram_hints(tokens, order, buckets, min_count, min_share)
    assert np.array_equal(hints.token, online_hints(tokens, order, buckets, min_count, min_share))
    assert (hints.source < np.arange(tokens.size)).all()  # counts read at t hold only tokens before t


@given(tokens=token_arrays.filter(lambda t: t.size >= 2), data=st.data())
@settings(max_examples=200, deadline=None)
def test_a_hint_depends_only_on_the_tokens_before_it(tokens, data) -> None:
    cut = data.draw(st.integers(0, tokens.size - 1))
    changed = tokens.copy()
    changed[cut:] = data.draw(st.lists(st.integers(0, 5), min_size=tokens.size - cut, max_size=tokens.size - cut))
    a, b = ngram_hints(tokens, 2, 16, 1, 0.0), ngram_hints(changed, 2, 16, 1, 0.0)
    assert np.array_equal(a.token[: cut + 1], b.token[: cut + 1])


def test_a_repeated_phrase_is_hinted_after_min_count_repeats() -> None:
    phrase = np.array([5, 9, 7, 11, 6])
    tokens = np.tile(phrase, 6)
    hints = ngram_hints(tokens, order=2, buckets=1 << 20, min_count=2, min_share=0.9)
    fired = np.flatnonzero(hints.token >= 0)
    assert fired.size and fired.min() == 2 * phrase.size + 2  # the third time round, once the order-2 context is there
    assert np.array_equal(hints.token[fired], tokens[fired])  # a pure repeat: every hint is right


@given(beta=st.floats(0.0, 8.0), seed=st.integers(0, 1000))
@settings(max_examples=100, deadline=None)
def test_closed_form_equals_the_materialized_normalized_distribution(beta: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(12, VOCAB, generator=gen) * 3
    targets = torch.randint(0, VOCAB, (12,), generator=gen)
    hints = torch.randint(-1, VOCAB, (12,), generator=gen)
    hints[:3] = targets[:3]  # some hits
    logp = torch.log_softmax(logits, dim=-1)
    tilted = tilt_log_probs(logp, hints, beta)
    assert torch.logsumexp(tilted, dim=-1).abs().max() < 1e-5  # sums to 1 over the vocabulary
    nll, picked = gather_log_probs(logits, targets, hints[:, None])
    closed = tilted_nll(nll.numpy(), picked[:, 0].numpy(), (targets == hints).double().numpy(), beta)
    expected = -tilted.gather(-1, targets[:, None])[:, 0].double().numpy()
    assert np.allclose(closed, expected, atol=1e-5)
    untouched = (hints < 0).numpy()
    assert np.array_equal(closed[untouched], nll.numpy()[untouched])


def test_gathering_leaves_the_scores_unchanged_and_picks_the_right_log_probs() -> None:
    model, stream = TinyCausalLM(seed=2), random_stream([25, 3, 18], seed=4)
    windows = sliding_windows(stream, 8, 3, False)
    ids = np.random.default_rng(0).integers(-1, VOCAB, size=(stream.num_tokens, 2))
    plain = run_windows(model, stream, windows, 4)
    gathered = run_windows(model, stream, windows, 4, ids)
    assert np.array_equal(plain.nll, gathered.nll, equal_nan=True)
    tokens = torch.from_numpy(stream.tokens)
    with torch.no_grad():
        for w in windows:
            logits = model(tokens[w.start : w.stop][None])[0]
            for p in range(w.score_from, w.stop + 1):
                logp = torch.log_softmax(logits[p - w.start - 1], dim=-1)
                for k in range(2):
                    want = float(logp[ids[p, k]]) if ids[p, k] >= 0 else np.nan
                    assert gathered.gathered[p, k] == pytest.approx(want, abs=1e-5, nan_ok=True)
                assert gathered.nll[p] == pytest.approx(float(token_nll(logits[p - w.start - 1], tokens[p])), abs=1e-5)


def repeating_stream(seed: int = 0):
    """Documents repeating short phrases drawn from a small pool: the n-gram counts learn them."""
    rng = np.random.default_rng(seed)
    pool = [rng.integers(4, VOCAB, size=6) for _ in range(3)]
    docs = [np.concatenate([[BOS], *(pool[i] for i in rng.integers(0, 3, size=8))]) for _ in range(10)]
    return stream_from_tokens(np.concatenate(docs), byte_table(), BOS)


def tilt_params(**overrides) -> EvalTiltParams:
    base = {"window": 16, "stride": 8, "batch_size": 8, "order": 2, "min_count": 2, "min_share": 0.5, "legality_tokens": 300}
    return EvalTiltParams(**{**base, **overrides})


@pytest.mark.parametrize("bounded", [False, True])
def test_zero_beta_reproduces_sliding_exactly(bounded: bool) -> None:
    model, stream = TinyCausalLM(seed=1), repeating_stream()
    p = tilt_params(beta=0.0, doc_bounded=bounded)
    tilt = evaluate_tilt(model, stream, p)
    sliding, _ = evaluate_sliding(model, stream, EvalSlidingParams(window=16, stride=8, batch_size=8, doc_bounded=bounded))
    assert tilt.hints > 0
    assert tilt.result.val_bpb == sliding.val_bpb and tilt.sliding.val_bpb == sliding.val_bpb
    assert tilt.result.val_loss == sliding.val_loss


def test_the_no_tilt_baseline_comes_from_the_same_forward_pass() -> None:
    """evaluate_tilt runs the sliding windows once: as many forward passes as sliding batches, not twice that."""
    model, stream = TinyCausalLM(seed=1), repeating_stream()
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    p = tilt_params(beta=2.0)
    out = evaluate_tilt(model, stream, p)
    batches = -(-len(sliding_windows(stream, p.window, p.stride, p.doc_bounded)) // p.batch_size)
    assert len(calls) == batches and out.sliding.val_bpb > out.result.val_bpb


def test_the_tilt_gains_on_repeated_phrases_and_reports_through_the_registry() -> None:
    model, stream = TinyCausalLM(seed=1), repeating_stream()
    out = METHODS["tilt"].evaluate(model, stream, tilt_params(beta=2.0))
    assert out.extra["tilt_gain_bpb"] > 0.1
    assert out.extra["val_bpb_no_tilt"] - out.result.val_bpb == pytest.approx(out.extra["tilt_gain_bpb"])
    assert out.extra["tilt_hits"] > 0.8 * out.extra["tilt_hints"] > 0
    assert out.extra["legality"]["passed"] and out.extra["legality"]["full_stream_checked"]
    assert out.result.scored_bytes == int(stream.target_bytes.sum())
    assert METHODS["tilt"].gap_score(model, stream, tilt_params(beta=2.0)) == out.result.val_bpb
    assert METHODS["tilt"].stage  # eval@tilt, params section eval_tilt


def test_a_hint_that_is_always_wrong_costs_bits() -> None:
    """The tilt is no free lunch: on random tokens hints rarely hit and the renormalization costs."""
    model, stream = TinyCausalLM(seed=1), random_stream([400], seed=3)
    out = evaluate_tilt(model, stream, tilt_params(order=1, min_count=1, min_share=0.0, beta=3.0))
    assert out.hints > 300 and out.result.val_bpb > out.sliding.val_bpb


def test_gather_compiles_without_graph_breaks() -> None:
    compiled = torch.compile(gather_log_probs, backend="eager", fullgraph=True)
    logits, targets, ids = torch.randn(5, VOCAB), torch.randint(0, VOCAB, (5,)), torch.randint(-1, VOCAB, (5, 2))
    for got, want in zip(compiled(logits, targets, ids), gather_log_probs(logits, targets, ids)):
        assert torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"min_share": 1.5}, "min_share"),
        ({"beta": -1.0}, "beta"),
        ({"order": 0}, "order"),
        ({"buckets": 0}, "buckets"),
        ({"stride": 300, "window": 256}, "stride"),
        ({"legality_samples": 0}, "legality_samples"),
        ({"hint_order": 3}, "unknown key"),
    ],
)
def test_bad_tilt_params_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        validate_section(EvalTiltParams, data, "tilt")
