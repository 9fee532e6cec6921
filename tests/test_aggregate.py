"""The aggregate stage: the seed rule (train.seed always joins) and the summary over seeds."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgolf.aggregate import aggregate, reference_summary, seed_order
from pgolf.config.aggregate import AggregateParams
from pgolf.config.base import validate_section
from pgolf.errors import DataError, ParamsError


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
    assert result["sliding"]["delta_bpb"] == pytest.approx(1.30 - 1.05651)  # against the record by default
    written = json.loads((metrics / "aggregate.json").read_text())
    assert {k: v for k, v in written.items() if k != "provenance"} == result
    assert written["provenance"]["config"]["aggregate"] and written["provenance"]["data"] is None
    tests = result["sliding"]["tests"]
    assert tests["seeds"] == {"meets": False, "n": 1, "min_seeds": 3}
    assert tests["record"]["meets"] is False and tests["record"]["p_value"] is None
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


def test_per_seed_reference_replaces_its_summary():
    params = AggregateParams(reference_bpb=[1.0, 1.1, 1.2], reference_mean_bpb=2.0, reference_n=50)
    ref = reference_summary(params)
    assert (ref.n, ref.mean, ref.std) == (3, pytest.approx(1.1), pytest.approx(0.1))
    assert reference_summary(AggregateParams()).mean == 1.05651


def test_one_per_seed_reference_value_is_one_line_error():
    with pytest.raises(ParamsError) as err:
        validate_section(AggregateParams, {"reference_bpb": [1.05]}, "aggregate")
    assert str(err.value).count("\n") == 0 and "aggregate.reference_bpb: needs at least 2" in str(err.value)


def _three_seeds(tmp_path: Path, monkeypatch, sliding: list[float]) -> SimpleNamespace:
    """Seeds 2 and 3 planted (their reruns are the stage functions, tested elsewhere)."""
    planted = dict(zip((2, 3), sliding[1:]))
    monkeypatch.setattr("pgolf.aggregate.run_extra_seed", lambda seed, run, d: {"sliding": planted[seed], "ttt": 1.0, "tilt": 1.0})
    (tmp_path / "tok.model").write_bytes(b"tokenizer")
    (tmp_path / "shards").mkdir()
    return SimpleNamespace(train={"seed": 1}, calibrate={}, quantize={}, pack={}, evals={"sliding": {}}, shards=tmp_path / "shards",
                           tokenizer=tmp_path / "tok.model")


@pytest.mark.parametrize(("sliding", "record", "chronological"), [
    ([1.0480, 1.0482, 1.0478], True, True),  # 0.0085 bpb = 0.0147 nats/token lower at bytes/token 2.5
    ([1.0555, 1.0557, 1.0553], False, True),  # 0.001 bpb lower: under the 0.005-nat margin (0.00289 bpb)
    ([1.0575, 1.0577, 1.0573], False, False),  # higher
])
def test_record_claim_needs_the_margin_at_p_001(tmp_path, monkeypatch, sliding, record, chronological):
    metrics = _metrics(tmp_path, sliding[0], 1.0)
    run = _three_seeds(tmp_path, monkeypatch, sliding)
    result = aggregate(AggregateParams(seeds=[2, 3]), 1, metrics, tmp_path / "agg", run)
    tests = result["sliding"]["tests"]
    assert result["sliding"]["n"] == 3 and tests["seeds"]["meets"]
    assert (tests["record"]["meets"], tests["chronological"]["meets"]) == (record, chronological)
    assert result["sliding"]["record_claim_holds"] is record
    assert tests["record"]["margin_bpb"] == pytest.approx(0.005 / (math.log(2) * 2.5))
    provenance = json.loads((metrics / "aggregate.json").read_text())["provenance"]
    assert set(provenance["config"]) == {"aggregate", "train", "calibrate", "quantize", "pack", "eval_sliding"}
    assert provenance["data"]["tokenizer_sha256"] == hashlib.sha256(b"tokenizer").hexdigest()
