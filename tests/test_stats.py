"""Seed statistics: summaries and the one-sided Welch t-test, checked against scipy's own test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from pgolf.stats import bpb_to_nats_per_byte, bpb_to_nats_per_token, summarize, welch_one_sided

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
