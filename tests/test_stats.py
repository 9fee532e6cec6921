"""Seed statistics: summaries and the one-sided Welch t-test, checked against scipy's own test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from pgolf.stats import (Rules, SeedSummary, bpb_to_nats_per_byte, bpb_to_nats_per_token, nats_per_token_to_bpb, precedence,
                         summarize, welch_one_sided)

values = st.lists(st.floats(min_value=0.5, max_value=2.0, allow_nan=False), min_size=2, max_size=8)


def test_summarize_sample_std():
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert summarize([1.2244]).std is None
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


@pytest.mark.filterwarnings("ignore:Precision loss occurred")
@settings(max_examples=60, deadline=None)
@given(values, values)
def test_welch_matches_scipy(a, b):
    if np.var(a) == 0 and np.var(b) == 0:
        assert welch_one_sided(summarize(a), summarize(b)) is None
        return
    ours = welch_one_sided(summarize(a), summarize(b))
    ref = scipy_stats.ttest_ind(a, b, equal_var=False, alternative="less")
    assert ours is not None
    assert ours.t == pytest.approx(ref.statistic, rel=1e-6, abs=1e-9)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_clear_improvement_is_significant_and_regression_is_not():
    reference = summarize([1.2244, 1.2250, 1.2239])
    better = summarize([1.2150, 1.2155, 1.2148])
    worse = summarize([1.2300, 1.2310, 1.2295])
    assert welch_one_sided(better, reference).p_value < 0.01
    assert welch_one_sided(worse, reference).p_value > 0.99
    assert welch_one_sided(summarize([1.0]), reference) is None


def test_unit_conversions():
    assert bpb_to_nats_per_byte(1.0) == pytest.approx(math.log(2))
    assert bpb_to_nats_per_token(0.01, 2.5) == pytest.approx(0.01 * math.log(2) * 2.5)


@pytest.mark.filterwarnings("ignore:Precision loss occurred")
@settings(max_examples=60, deadline=None)
@given(values, values, st.floats(min_value=0.0, max_value=0.05))
def test_welch_with_a_margin_is_the_test_of_the_shifted_candidate(a, b, margin):
    """H1: mean(a) < mean(b) - margin is the plain test of a + margin against b."""
    if np.var(a) == 0 and np.var(b) == 0:
        return
    ours = welch_one_sided(summarize(a), summarize(b), margin)
    ref = scipy_stats.ttest_ind(np.asarray(a) + margin, b, equal_var=False, alternative="less")
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


@given(st.floats(min_value=-1.0, max_value=1.0), st.floats(min_value=1.0, max_value=8.0))
def test_nats_per_token_and_bpb_round_trip(delta_bpb, bytes_per_token):
    back = nats_per_token_to_bpb(bpb_to_nats_per_token(delta_bpb, bytes_per_token), bytes_per_token)
    assert back == pytest.approx(delta_bpb, abs=1e-12)


RECORD = SeedSummary(n=3, mean=1.05651, std=0.0005)
SP8192_BYTES_PER_TOKEN = 151.08e6 / 40.5e6  # CHALLENGE.md, Data: ~151.08 M bytes, 40.5 M sp8192 tokens


def test_the_record_margin_in_bpb_matches_the_records_conversion():
    """Records convert 0.005 nats/token to ~0.00194 bpb on sp8192 (parameter-golf record 2026-04-22 README)."""
    tests = precedence(summarize([1.050, 1.0505, 1.0495]), RECORD, SP8192_BYTES_PER_TOKEN)
    assert tests["record"]["margin_bpb"] == pytest.approx(0.00193, abs=1e-5)
    assert tests["record"]["margin_nats_per_token"] == 0.005 and tests["chronological"]["margin_bpb"] == 0.0


def test_which_tests_a_candidate_meets():
    clear = precedence(summarize([1.0500, 1.0502, 1.0498]), RECORD, SP8192_BYTES_PER_TOKEN)  # 0.0065 bpb lower
    assert all(t["meets"] for t in clear.values())
    # Lower, but by less than the 0.005-nat margin: chronological progress, not a record.
    small = precedence(summarize([1.0555, 1.0557, 1.0553]), RECORD, SP8192_BYTES_PER_TOKEN)
    assert small["chronological"]["meets"] and not small["record"]["meets"]
    assert small["record"]["p_value"] > 0.5 > small["chronological"]["p_value"]
    two = precedence(summarize([1.0500, 1.0502]), RECORD, SP8192_BYTES_PER_TOKEN)
    assert not two["seeds"]["meets"] and two["record"]["meets"]  # significant, but not a mean over 3 seeds
    one = precedence(summarize([1.0]), RECORD, SP8192_BYTES_PER_TOKEN)
    assert not any(t["meets"] for t in one.values()) and one["record"]["p_value"] is None
    strict = precedence(summarize([1.0555, 1.0557, 1.0553]), RECORD, SP8192_BYTES_PER_TOKEN, Rules(chronological_alpha=1e-6))
    assert not strict["chronological"]["meets"]
