"""The aggregate stage's pure parts: per-seed command rewriting and the summary over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgolf.aggregate import SEED_STAGES, aggregate, seed_commands
from pgolf.config.aggregate import AggregateParams
from pgolf.errors import DataError


def _dvc_yaml() -> dict:
    cmds = {
        "train": "torchrun --nproc_per_node=${train.nproc} stages/train.py --shards data/shards --out data/train --metrics metrics/train.json",
        "calibrate": "python stages/calibrate.py --checkpoint data/train/checkpoint --out data/calibrate",
        "quantize": "python stages/quantize.py --hessians data/calibrate --out data/quantize",
        "pack": "python stages/pack.py --quantized data/quantize --out data/pack --metrics metrics/pack.json",
        "eval_sliding": "python stages/eval_sliding.py --artifact data/pack/model.pgolf --metrics metrics/eval_sliding.json",
        "eval_ttt": "python stages/eval_ttt.py --artifact data/pack/model.pgolf --metrics metrics/eval_ttt.json",
    }
    return {"stages": {name: {"cmd": cmd} for name, cmd in cmds.items()}}


def test_seed_commands_rewrite_outputs_not_shared_inputs(tmp_path):
    seed_dir = tmp_path / "seed-7"
    cmds = seed_commands(_dvc_yaml(), {"train": {"nproc": 2}}, seed_dir, seed_dir / "params.yaml")
    assert len(cmds) == len(SEED_STAGES)
    assert cmds[0].startswith("torchrun --nproc_per_node=2 stages/train.py --shards data/shards ")
    assert f"--out {seed_dir}/data/train " in cmds[0]
    assert f"--metrics {seed_dir}/metrics/train.json" in cmds[0]
    assert all(c.endswith(f"--params {seed_dir}/params.yaml") for c in cmds)
    assert f"--artifact {seed_dir}/data/pack/model.pgolf" in cmds[4]


def test_seed_commands_name_missing_stage_or_param(tmp_path):
    dvc_yaml = _dvc_yaml()
    del dvc_yaml["stages"]["pack"]
    with pytest.raises(DataError, match="'pack'"):
        seed_commands(dvc_yaml, {"train": {"nproc": 1}}, tmp_path, tmp_path / "p.yaml")
    with pytest.raises(DataError, match="train.nproc"):
        seed_commands(_dvc_yaml(), {"train": {}}, tmp_path, tmp_path / "p.yaml")


def _metrics(tmp_path: Path, sliding: float, ttt: float) -> Path:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "eval_sliding.json").write_text(json.dumps({"val_bpb": sliding}))
    (metrics / "eval_ttt.json").write_text(json.dumps({"val_bpb": ttt}))
    (metrics / "audit.json").write_text(json.dumps({"bytes_per_token": 2.5}))
    return metrics


def test_single_seed_summary_has_no_test(tmp_path):
    metrics = _metrics(tmp_path, 1.30, 1.29)
    result = aggregate(AggregateParams(), 1337, tmp_path, metrics, tmp_path / "agg")
    assert result["seeds"] == [1337]
    assert result["sliding"]["mean_bpb"] == 1.30 and result["sliding"]["std_bpb"] is None
    assert result["ttt"]["welch"] is None and result["ttt"]["record_claim_holds"] is False
    assert result["sliding"]["delta_bpb"] == pytest.approx(1.30 - 1.2244)
    assert json.loads((metrics / "aggregate.json").read_text()) == result
    assert json.loads((tmp_path / "agg" / "per_seed.json").read_text()) == {"1337": {"sliding": 1.30, "ttt": 1.29}}


def test_seeds_must_include_the_main_seed(tmp_path):
    metrics = _metrics(tmp_path, 1.30, 1.29)
    with pytest.raises(DataError, match="must include the main run's seed train.seed=1337"):
        aggregate(AggregateParams(seeds=[1, 2]), 1337, tmp_path, metrics, tmp_path / "agg")


def test_missing_metrics_named(tmp_path):
    with pytest.raises(DataError, match="eval_sliding.json"):
        aggregate(AggregateParams(), 1337, tmp_path, tmp_path / "nowhere", tmp_path / "agg")
