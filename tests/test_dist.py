"""Distribution: a 2-process gloo run equals a 1-process run with twice the gradient accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from pgolf.dist import DistInfo, init_dist, join_group, shutdown
from pgolf.train.loop import train
from train_helpers import make_shards, tiny_params

torch.set_num_threads(1)
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
