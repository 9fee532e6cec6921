"""Sliding-window and plain evaluation: coverage, equality at stride = window, brute-force agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import BOS, TinyCausalLM, random_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.base import validate_section
from pgolf.config.eval import EvalPlainParams, EvalSlidingParams
from pgolf.errors import ParamsError
from pgolf.eval.bpb import token_nll
from pgolf.eval.plain import evaluate_plain, plain_windows
from pgolf.eval.sliding import evaluate_sliding, sliding_windows

torch.set_num_threads(1)

doc_lengths = st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(lambda ls: sum(ls) + len(ls) >= 2)


def context_start(position: int, begin: int, window: int, stride: int) -> int:
    """Closed form: where the context of target `position` starts in a segment starting at `begin`."""
    offset = position - begin  # the target's distance from the segment start, >= 1
    if offset <= window:
        return begin
    k = -(-(offset - window) // stride)  # ceil: the first window whose stop reaches the target
    return begin + k * stride


@given(lengths=doc_lengths, window=st.integers(1, 12), stride=st.integers(1, 12), bounded=st.booleans())
@settings(max_examples=200, deadline=None)
def test_windows_score_every_target_once(lengths: list[int], window: int, stride: int, bounded: bool) -> None:
    stride = min(stride, window)
    stream = random_stream(lengths)
    counts = np.zeros(stream.num_tokens, dtype=int)
    for w in sliding_windows(stream, window, stride, bounded):
        assert w.length <= window
        counts[w.score_from : w.stop + 1] += 1
        if bounded:  # the context holds no BOS after its first token
            assert not (stream.tokens[w.start + 1 : w.stop] == BOS).any()
        for p in range(w.score_from, w.stop + 1):
            begin = int(np.flatnonzero(stream.tokens[:p] == BOS)[-1]) if bounded else 0
            assert w.start == context_start(p, begin, window, stride)
    assert counts[0] == 0 and (counts[1:] == 1).all()


@given(lengths=doc_lengths, window=st.integers(1, 12))
@settings(max_examples=100, deadline=None)
def test_stride_equal_to_window_gives_the_plain_windows(lengths: list[int], window: int) -> None:
    stream = random_stream(lengths)
    assert sliding_windows(stream, window, window, doc_bounded=False) == plain_windows(stream, window)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_stride_equal_to_window_equals_plain_exactly(batch_size: int) -> None:
    model = TinyCausalLM()
    stream = random_stream([30, 7, 55, 0, 12], seed=1)
    plain, plain_nll = evaluate_plain(model, stream, EvalPlainParams(seq_len=16, batch_size=batch_size))
    sliding, sliding_nll = evaluate_sliding(model, stream, EvalSlidingParams(window=16, stride=16, batch_size=batch_size))
    assert np.array_equal(plain_nll, sliding_nll, equal_nan=True)
    assert (plain.val_bpb, plain.val_loss, plain.scored_bytes) == (sliding.val_bpb, sliding.val_loss, sliding.scored_bytes)


@pytest.mark.parametrize(("window", "stride", "bounded"), [(8, 3, False), (8, 3, True), (5, 5, True), (20, 1, False)])
def test_sliding_equals_brute_force_per_token_scoring(window: int, stride: int, bounded: bool) -> None:
    model = TinyCausalLM(seed=2)
    stream = random_stream([25, 3, 18], seed=4)
    result, nll = evaluate_sliding(model, stream, EvalSlidingParams(window=window, stride=stride, batch_size=4, doc_bounded=bounded))
    tokens = torch.from_numpy(stream.tokens)
    with torch.no_grad():
        for p in range(1, stream.num_tokens):
            begin = int(np.flatnonzero(stream.tokens[:p] == BOS)[-1]) if bounded else 0
            start = context_start(p, begin, window, stride)
            logits = model(tokens[start:p][None])[0, -1]
            assert nll[p] == pytest.approx(float(token_nll(logits, tokens[p])), abs=1e-5)
    assert result.scored_tokens == stream.num_tokens - 1
    assert result.scored_bytes == int(stream.target_bytes.sum())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stride": 300, "window": 256}, "stride"),
        ({"window": 0}, "window"),
        ({"batch_size": 0}, "batch_size"),
        ({"doc_bounded": "maybe"}, "doc_bounded"),
        ({"strides": 4}, "unknown key"),
    ],
)
def test_bad_sliding_params_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        validate_section(EvalSlidingParams, data, "eval_sliding")
