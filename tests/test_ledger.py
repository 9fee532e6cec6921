"""The timing ledger: phases recorded on an injected clock, the leaderboard's readings and their limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgolf.ledger import (EVAL_LIMIT_SECONDS, TRAIN_LIMIT_SECONDS, Phases, eval_seconds, hardware_note, on_record_hardware,
                          readings, record_failures)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limits_are_the_challenges():
    """CHALLENGE.md, Rules: 600 s of training and a separate 600 s of evaluation on 8x H100."""
    assert (TRAIN_LIMIT_SECONDS, EVAL_LIMIT_SECONDS) == (600.0, 600.0)


def test_phases_add_up_and_carve():
    clock = Clock()
    phases = Phases(clock)
    with phases("loop"):
        clock.now += 10.0
    with phases("loop"):
        clock.now += 5.0
    phases.move(2.0, "loop", "compile_warmup")
    with pytest.raises(RuntimeError), phases("hessians"):
        clock.now += 1.5
        raise RuntimeError("a failing phase still counts")
    clock.now += 0.5
    assert phases.ledger() == {"wall_seconds": 17.0, "phases": {"loop": 13.0, "compile_warmup": 2.0, "hessians": 1.5}}
    with pytest.raises(ValueError, match="cannot move 20.000 s out of phase 'loop'"):
        phases.move(20.0, "loop", "x")


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0.0, 100.0)), max_size=10))
def test_phases_never_exceed_the_wall(steps):
    clock = Clock()
    phases = Phases(clock)
    for name, seconds in steps:
        with phases(name):
            clock.now += seconds
    ledger = phases.ledger()
    assert sum(ledger["phases"].values()) == pytest.approx(ledger["wall_seconds"])


def _by_name(found):
    return {r.name: r for r in found}


def test_strict_and_lenient_readings():
    """The records' disagreement: 599.7 s loop + 6.9 s Hessians passes lenient, fails strict."""
    r = _by_name(readings({"wallclock_seconds": 599.7}, 6.9, {}))
    assert r["strict"].seconds == pytest.approx(606.6) and r["strict"].exceeds
    assert r["lenient"].seconds == 599.7 and not r["lenient"].exceeds
    ok = _by_name(readings({"wallclock_seconds": 595.0}, 4.1, {}))
    assert ok["strict"].seconds == pytest.approx(599.1) and not ok["strict"].exceeds
    assert _by_name(readings({"wallclock_seconds": 595.0}, None, {}))["strict"].seconds is None  # no Hessians measured


def test_eval_readings_per_method_and_total():
    evals = {"sliding": {"seconds": 100.0, "phases": {"precompute": 5.0, "scoring": 130.0, "gap": 90.0}},
             "ttt": {"seconds": 590.0, "phases": {"precompute": 15.0}}, "tilt": {}}
    r = _by_name(readings({}, None, evals))
    assert r["eval sliding"].seconds == 105.0 and not r["eval sliding"].exceeds  # legality and gap are not counted
    assert r["eval ttt"].seconds == 605.0 and r["eval ttt"].exceeds
    assert r["eval tilt"].seconds is None
    assert r["eval total"].seconds == 710.0 and r["eval total"].limit is None and not r["eval total"].exceeds
    assert eval_seconds({"seconds": 3.0}) == 3.0
    # A sidecar with counted_seconds (compile warm-up and TTT's global phases included) is read as written.
    assert eval_seconds({"seconds": 3.0, "counted_seconds": 7.5, "phases": {"precompute": 1.0}}) == 7.5
    assert eval_seconds({"seconds": 3.0, "counted_seconds": True}) == 3.0  # not a number: the older reading


def test_record_failures_name_each_reading():
    found = readings({"wallclock_seconds": 599.7}, 6.9, {"ttt": {"seconds": 612.0}})
    assert record_failures(found) == ["strict 606.6 s > 600 s", "eval ttt 612.0 s > 600 s"]
    assert record_failures(readings({}, None, {})) == ["strict not measured", "lenient not measured"]
    assert record_failures(readings({"wallclock_seconds": 500.0}, 5.0, {"sliding": {"seconds": 90.0}})) == []


def test_hardware_note():
    h100 = {"kind": "NVIDIA H100 80GB HBM3", "count": 8}
    assert on_record_hardware(h100) and "the record hardware" in hardware_note(h100)
    assert not on_record_hardware({**h100, "count": 1}) and not on_record_hardware({"kind": "cpu", "count": 1})
    assert hardware_note({"kind": "cpu", "count": 1}) == "measured on cpu x1, not 8x H100 80GB SXM: the readings are not a record's"
    assert "no provenance" in hardware_note(None)
