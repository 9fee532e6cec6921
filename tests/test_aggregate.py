"""The aggregate stage: the seed rule (train.seed always joins) and the summary over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgolf.aggregate import aggregate, seed_order
from pgolf.config.aggregate import AggregateParams
from pgolf.errors import DataError


def _metrics(tmp_path: Path, sliding: float, ttt: float) -> Path:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "eval_sliding.json").write_text(json.dumps({"val_bpb": sliding}))
    (metrics / "eval_ttt.json").write_text(json.dumps({"val_bpb": ttt}))
    (metrics / "eval_tilt.json").write_text(json.dumps({"val_bpb": sliding - 0.02}))
    (metrics / "audit.json").write_text(json.dumps({"bytes_per_token": 2.5}))
    return metrics


def test_the_main_seed_always_joins_first():
    assert seed_order(42, []) == [42]
    assert seed_order(42, [1337, 42, 7]) == [42, 1337, 7]
    assert seed_order(1337, [1337, 1338, 1339]) == [1337, 1338, 1339]
    assert seed_order(5, [7, 7]) == [5, 7]


def test_single_seed_summary_has_no_test(tmp_path):
    metrics = _metrics(tmp_path, 1.30, 1.29)
    result = aggregate(AggregateParams(), 1337, metrics, tmp_path / "agg")
    assert result["seeds"] == [1337]
    assert result["sliding"]["mean_bpb"] == 1.30 and result["sliding"]["std_bpb"] is None
    assert result["ttt"]["welch"] is None and result["ttt"]["record_claim_holds"] is False
    assert result["sliding"]["delta_bpb"] == pytest.approx(1.30 - 1.2244)
    assert json.loads((metrics / "aggregate.json").read_text()) == result
    assert json.loads((tmp_path / "agg" / "per_seed.json").read_text()) == {"1337": {"sliding": 1.30, "ttt": 1.29, "tilt": pytest.approx(1.28)}}


def test_a_seed_ablation_of_the_main_seed_needs_no_seed_list(tmp_path):
    """`dvc exp run -S train.seed=42` with the default seed list aggregates seed 42 alone."""
    metrics = _metrics(tmp_path, 1.30, 1.29)
    assert aggregate(AggregateParams(seeds=[42]), 42, metrics, tmp_path / "agg")["seeds"] == [42]


def test_extra_seeds_without_a_run_are_named(tmp_path):
    metrics = _metrics(tmp_path, 1.30, 1.29)
    with pytest.raises(DataError, match="seed 7"):
        aggregate(AggregateParams(seeds=[1337, 7]), 1337, metrics, tmp_path / "agg")


def test_missing_metrics_named(tmp_path):
    with pytest.raises(DataError, match="eval_sliding.json"):
        aggregate(AggregateParams(), 1337, tmp_path / "nowhere", tmp_path / "agg")
