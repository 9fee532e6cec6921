"""Distribution: a 2-process gloo run equals a 1-process run with twice the gradient accumulation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from pgolf.dist import DistInfo, init_dist, join_group, shutdown
from pgolf.procs import descendants, proc_info
from pgolf.train.loop import train
from pgolf.train.stage import run_train_stage
from train_helpers import make_shards, tiny_params

torch.set_num_threads(1)
STAGE = Path(__file__).resolve().parents[1] / "stages" / "train.py"
STEPS = 6
TOLERANCE = 1e-5


def _worker(rank: int, world_size: int, init_file: str, shards: str, out: str, tmp: str) -> None:
    torch.set_num_threads(1)
    info = join_group(rank, world_size, rank, "cpu", f"file://{init_file}")
    try:
        params = tiny_params(Path(tmp), iterations=STEPS, grad_accum_steps=2, nproc=world_size, resume=False)
        result = train(params, Path(shards), Path(out), info)
        if info.is_main:
            Path(out, "result.json").write_text(json.dumps(result.metrics()))
    finally:
        shutdown(info)


def test_dist_two_gloo_processes_equal_one_process_with_double_accumulation(tmp_path):
    shards = make_shards(tmp_path / "shards")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(shards), str(tmp_path / "two"), str(tmp_path)), nprocs=2, join=True)
    single = DistInfo(0, 1, 0, torch.device("cpu"), None)
    one = train(tiny_params(tmp_path, iterations=STEPS, grad_accum_steps=2, resume=False), shards, tmp_path / "one", single)
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["steps"] == one.steps == STEPS and two["tokens_seen"] == one.tokens_seen
    assert two["train_loss"] == pytest.approx(one.train_loss, abs=TOLERANCE)
    assert two["val_loss"] == pytest.approx(one.val_loss, abs=TOLERANCE)
    w1 = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "checkpoint" / "model.safetensors"))
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=TOLERANCE), name


def test_dist_single_process_without_torchrun():
    info = init_dist("cpu")
    assert (info.rank, info.world_size, info.backend, info.distributed, info.is_main) == (0, 1, None, False, True)


def test_dist_run_train_stage_with_nproc_2_runs_torchrun_as_a_child_and_returns(tmp_path):
    """In this process (as the aggregate stage calls it): torchrun runs 2 gloo workers as a child,
    the call returns the result (read back from the metrics) and leaves no process behind.
    (A worker's failure as a one-line PgolfError: tests/test_kill.py.)"""
    shards = make_shards(tmp_path / "shards")
    params = tiny_params(tmp_path, iterations=STEPS, grad_accum_steps=2, nproc=2, threads=1, resume=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": params.model_dump(mode="json")}))
    paths = ["--shards", str(shards), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"), "--live", str(tmp_path / "live")]
    argv = [str(STAGE), "--params", str(tmp_path / "params.yaml"), *paths]
    result = run_train_stage(params, shards, tmp_path / "out", tmp_path / "m.json", tmp_path / "live", argv=argv)
    assert result is not None and result.steps == STEPS and result.metrics() == json.loads((tmp_path / "m.json").read_text())
    assert (tmp_path / "out" / "checkpoint" / "model.safetensors").is_file()
    left = [_cmdline(pid) for pid in descendants(os.getpid()) if (info := proc_info(pid)) and info.state != "Z"]
    assert not [cmd for cmd in left if str(STAGE) in cmd]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
