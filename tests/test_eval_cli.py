"""`pgolf eval` on a real packed artifact, real shards and a real tokenizer (all tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import make_workspace
import torch
from data_helpers import english_docs, trained_processor

from pgolf.cli import main
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.config.model import ModelParams
from pgolf.data.shards import SHARDS_MANIFEST, write_shard
from pgolf.model import GPT, model_config_dict
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import quantize_state
from pgolf.bytetable import byte_table, stream_bytes
from pgolf.train.checkpoint import CheckpointMeta, save_checkpoint
from pgolf.train.data import StreamPosition

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: extra threads only contend
STAGE_PARAMS = """
eval_sliding: {window: 64, stride: 32, batch_size: 16, doc_bounded: true}
eval_ttt: {chunk_tokens: 32, window: 64, batch_docs: 8, lr: 0.01, legality_tokens: 300}
eval_tilt: {window: 64, stride: 32, batch_size: 16, legality_tokens: 300, order: 2}
"""

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    return make_workspace(tmp_path_factory.mktemp("eval_cli"))


def run_eval(ws: dict, capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["eval", str(ws["artifact"]), "--shards", str(ws["shards"]), "--tokenizer", str(ws["tokenizer"]), *args])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and "--json" in args else None), captured.err


def test_sliding_with_stride_equal_to_window_equals_plain(workspace, capsys) -> None:
    code, plain, _ = run_eval(workspace, capsys, "--method", "plain", "--set", "seq_len=64", "--json")
    assert code == 0
    code, sliding, _ = run_eval(workspace, capsys, "--method", "sliding", "--set", "window=64", "--set", "stride=64", "--json")
    assert code == 0
    for key in ("val_bpb", "val_loss", "scored_tokens", "scored_bytes"):
        assert plain[key] == sliding[key], key
    assert set(plain) >= {"val_bpb", "val_loss", "scored_tokens", "scored_bytes", "seconds"}


def test_scored_bytes_equal_the_audits_val_bytes(workspace, capsys) -> None:
    code, out, _ = run_eval(workspace, capsys, "--method", "sliding", "--set", "window=64", "--set", "stride=16", "--json")
    assert code == 0
    assert out["scored_bytes"] == workspace["val_bytes"]
    assert out["scored_tokens"] == workspace["tokens"].size - 1
    assert 0 < out["val_bpb"] < 20


def test_ttt_reports_no_ttt_and_a_passed_legality_check(workspace, capsys) -> None:
    sets = ["chunk_tokens=32", "window=64", "legality_tokens=300", "batch_docs=8", "lr=0.01"]
    code, out, _ = run_eval(workspace, capsys, "--method", "ttt", *[a for s in sets for a in ("--set", s)], "--json")
    assert code == 0
    assert out["legality"]["passed"] and out["legality"]["c1_max_score_change_nats"] == 0.0
    assert out["scored_bytes"] == workspace["val_bytes"]
    assert np.isfinite(out["val_bpb_no_ttt"]) and out["val_bpb"] != out["val_bpb_no_ttt"]


def test_human_readable_output(workspace, capsys) -> None:
    code, _, _ = run_eval(workspace, capsys, "--method", "plain")
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "plain", "--set", "stride=4"], "plain.stride: unknown key"),
        (["--method", "sliding", "--set", "stride=0"], "sliding.stride"),
        (["--method", "sliding", "--set", "window"], "expected key=value"),
        (["--method", "ttt", "--set", "chunk_tokens=999", "--set", "window=64"], "chunk_tokens"),
    ],
)
def test_bad_sets_exit_2_naming_the_key(workspace, capsys, args: list[str], message: str) -> None:
    code, _, err = run_eval(workspace, capsys, *args)
    assert code == 2 and message in err


def test_missing_inputs_exit_1(workspace, capsys, tmp_path: Path) -> None:
    bad = dict(workspace, artifact=tmp_path / "missing.pgolf")
    code, _, err = run_eval(bad, capsys, "--method", "plain")
    assert code == 1 and "error:" in err
    (tmp_path / "junk.pgolf").write_bytes(b"not an artifact")
    code, _, err = run_eval(dict(workspace, artifact=tmp_path / "junk.pgolf"), capsys, "--method", "plain")
    assert code == 1
    code, _, err = run_eval(dict(workspace, shards=tmp_path), capsys, "--method", "plain")
    assert code == 1 and "manifest" in err


def run_stage_script(ws: dict, name: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "params.yaml").write_text(STAGE_PARAMS)
    metrics = tmp_path / "metrics" / f"{name}.json"
    args = ["--artifact", ws["artifact"].parent, "--shards", ws["shards"], "--tokenizer", ws["tokenizer"], "--checkpoint", ws["checkpoint"], "--metrics", metrics]
    cmd = [sys.executable, str(REPO / "stages" / "eval.py"), "--method", name.removeprefix("eval_"), *map(str, args)]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ONE_THREAD), metrics


def test_eval_sliding_stage_writes_metrics_with_the_gap(workspace, tmp_path: Path) -> None:
    proc, metrics = run_stage_script(workspace, "eval_sliding", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(metrics.read_text())
    assert set(out) == {"val_bpb", "val_loss", "scored_tokens", "scored_bytes", "quantization_gap", "legality", "provenance"}
    assert out["legality"]["passed"] is True and out["provenance"]["config"].keys() == {"eval_sliding"}
    timing = json.loads((metrics.parent / "timing" / metrics.name).read_text())  # run to run: apart
    assert set(timing) == {"seconds", "counted_seconds", "wall_seconds", "phases", "provenance"}
    assert timing["phases"].keys() == {"precompute", "legality", "scoring", "gap"}
    assert timing["counted_seconds"] == pytest.approx(timing["phases"]["precompute"] + timing["phases"]["scoring"])  # not the probe, not the gap
    assert out["scored_bytes"] == workspace["val_bytes"]
    assert isinstance(out["quantization_gap"], float) and out["quantization_gap"] != 0.0


def test_eval_ttt_stage_writes_metrics_with_legality(workspace, tmp_path: Path) -> None:
    proc, metrics = run_stage_script(workspace, "eval_ttt", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(metrics.read_text())
    assert {"val_bpb", "val_loss", "scored_tokens", "scored_bytes", "quantization_gap", "val_bpb_no_ttt"} <= set(out)
    assert out["legality"]["passed"] is True
    assert "legality: passed" in proc.stderr


def test_eval_tilt_stage_writes_metrics_with_its_gain_and_legality(workspace, tmp_path: Path) -> None:
    proc, metrics = run_stage_script(workspace, "eval_tilt", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(metrics.read_text())
    assert {"val_bpb", "val_bpb_no_tilt", "tilt_gain_bpb", "tilt_hints", "quantization_gap"} <= set(out)
    assert out["legality"]["passed"] is True and out["scored_bytes"] == workspace["val_bytes"]
    assert out["tilt_gain_bpb"] == out["val_bpb_no_tilt"] - out["val_bpb"]


def test_stage_with_bad_params_exits_2_and_writes_nothing(workspace, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("eval_sliding: {window: 8, stride: 16}\n")
    cmd = [sys.executable, str(REPO / "stages" / "eval.py"), "--method", "sliding", "--metrics", str(tmp_path / "m.json")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert proc.returncode == 2 and "stride (16) must be <= window (8)" in proc.stderr
    assert not (tmp_path / "m.json").exists()


def test_artifact_made_for_another_tokenizer_is_refused(workspace, tmp_path: Path, capsys) -> None:
    """The pack stage records the tokenizer's sha256; evaluation against another vocabulary's
    tokens refuses instead of printing a meaningless val_bpb."""
    from pgolf.bytetable import tokenizer_sha256
    from pgolf.pack.artifact import parse_artifact
    from pgolf.pack.pack import pack_stage
    from pgolf.quant.store import save_quantized

    qdir = tmp_path / "quantize"
    qdir.mkdir()
    model = GPT(ModelParams(vocab_size=384, layers=1, width=32, heads=2, kv_heads=1))
    save_quantized(quantize_state(model.state_dict(), {}, QuantizeParams(method="rtn", min_numel=512), model_config_dict(model)), qdir)
    other = tmp_path / "other.model"
    other.write_bytes(b"a different tokenizer file")
    pack_stage(PackParams(), qdir, tmp_path / "pack", tmp_path / "pack.json", repo_root=REPO, tokenizer=other)
    artifact = tmp_path / "pack" / "model.pgolf"
    assert parse_artifact(artifact.read_bytes()).header.meta["tokenizer_sha256"] == tokenizer_sha256(other)
    code, _, err = run_eval(dict(workspace, artifact=artifact), capsys, "--method", "plain")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"error: {artifact}: made for tokenizer sha256 ")
    pack_stage(PackParams(), qdir, tmp_path / "pack", tmp_path / "pack.json", repo_root=REPO, tokenizer=workspace["tokenizer"])
    code, _, err = run_eval(dict(workspace, artifact=artifact), capsys, "--method", "plain", "--set", "seq_len=64")
    assert code == 0, err


def test_artifact_format_errors_name_the_file(workspace, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "truncated.pgolf"
    bad.write_bytes(workspace["artifact"].read_bytes()[:100])
    code, _, err = run_eval(dict(workspace, artifact=bad), capsys, "--method", "plain")
    assert code == 1 and err.strip().splitlines()[-1].startswith(f"error: {bad}: truncated")
