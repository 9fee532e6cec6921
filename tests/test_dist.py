"""Distribution: 2- and 4-process gloo runs equal a 1-process run with the same global batch."""

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


def _worker(rank: int, world_size: int, init_file: str, shards: str, out: str, tmp: str, accum: int = 2) -> None:
    torch.set_num_threads(1)
    info = join_group(rank, world_size, rank, "cpu", f"file://{init_file}")
    try:
        params = tiny_params(Path(tmp), iterations=STEPS, grad_accum_steps=accum, nproc=world_size, resume=False)
        result = train(params, Path(shards), Path(out), info)
        if info.is_main:
            Path(out, "result.json").write_text(json.dumps(result.metrics()))
    finally:
        shutdown(info)


@pytest.mark.parametrize(("world", "accum"), [(2, 2), (2, 4), (4, 4)])
def test_dist_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path, world, accum):
    """Gradients are averaged over ranks during the last micro-batch's backward (bucketed async
    all-reduce, pgolf/train/ddp.py); accum/world micro-batches per rank only accumulate."""
    shards = make_shards(tmp_path / "shards")
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(shards), str(tmp_path / "two"), str(tmp_path), accum), nprocs=world, join=True)
    single = DistInfo(0, 1, 0, torch.device("cpu"), None)
    one = train(tiny_params(tmp_path, iterations=STEPS, grad_accum_steps=accum, resume=False), shards, tmp_path / "one", single)
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
    written = json.loads((tmp_path / "m.json").read_text())
    written.pop("provenance", None)  # the stage adds where the numbers came from (pgolf.provenance)
    assert result is not None and result.steps == STEPS and result.metrics() == written
    assert (tmp_path / "out" / "checkpoint" / "model.safetensors").is_file()
    left = [_cmdline(pid) for pid in descendants(os.getpid()) if (info := proc_info(pid)) and info.state != "Z"]
    assert not [cmd for cmd in left if str(STAGE) in cmd]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_two_processes_meet_at_the_rendezvous_and_equal_one_process(tmp_path):
    """nnodes = 2 on localhost: two stage launchers (node 0 and node 1, 2 gloo workers each) meet at
    node 0's endpoint; the 4-rank run equals one process with 4 micro-batches per step, node 0 wrote
    every output and node 1 none."""
    import subprocess
    import sys

    shards = make_shards(tmp_path / "shards")
    endpoint = f"127.0.0.1:{_free_port()}"
    launchers = []
    for node in (0, 1):
        params = tiny_params(tmp_path, iterations=STEPS, grad_accum_steps=4, nproc=2, nnodes=2, node_rank=node,
                             rdzv_endpoint=endpoint, threads=1, resume=False, resume_dir=str(tmp_path / f"resume{node}"))
        node_dir = tmp_path / f"node{node}"
        node_dir.mkdir()
        (node_dir / "params.yaml").write_text(yaml.safe_dump({"train": params.model_dump(mode="json")}))
        cmd = [sys.executable, str(STAGE), "--params", str(node_dir / "params.yaml"), "--shards", str(shards),
               "--out", str(node_dir / "out"), "--metrics", str(node_dir / "m.json"), "--live", str(node_dir / "live")]
        launchers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], outputs
    assert "node 1 of 2: done" in outputs[1]
    assert not (tmp_path / "node1" / "out").exists() and not (tmp_path / "node1" / "m.json").exists()
    four = json.loads((tmp_path / "node0" / "m.json").read_text())
    single = DistInfo(0, 1, 0, torch.device("cpu"), None)
    one = train(tiny_params(tmp_path, iterations=STEPS, grad_accum_steps=4, resume=False), shards, tmp_path / "one", single)
    assert four["steps"] == one.steps == STEPS and four["tokens_seen"] == one.tokens_seen
    assert four["train_loss"] == pytest.approx(one.train_loss, abs=TOLERANCE)
    w1 = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    w4 = load_file(str(tmp_path / "node0" / "out" / "checkpoint" / "model.safetensors"))
    for name in w1:
        assert torch.allclose(w1[name], w4[name], atol=TOLERANCE), name


def test_rendezvous_options_one_machine_or_static_rendezvous_at_node_0():
    from pgolf.launch import rendezvous_options
    from pgolf.config.train import TrainParams

    assert rendezvous_options(8) == ["--standalone", "--nproc-per-node=8"]
    assert rendezvous_options(8, 2, 1, "10.0.0.1:29500") == [
        "--nnodes=2", "--node-rank=1", "--nproc-per-node=8", "--master-addr=10.0.0.1", "--master-port=29500"]
    for bad, message in (({"nnodes": 2}, "needs rdzv_endpoint"), ({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "h:1"}, "node_rank"),
                         ({"rdzv_endpoint": "nohost"}, "host:port"), ({"nnodes": 3, "rdzv_endpoint": "h:1", "grad_accum_steps": 2}, "nproc \\* nnodes")):
        with pytest.raises(ValueError, match=message):
            TrainParams.model_validate(bad)


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    import numpy as np

    from pgolf.dist import gather_scores, join_group, shutdown

    info = join_group(rank, world, rank, "cpu", init)
    values = np.full(7, np.nan)
    values[rank::world] = np.arange(7, dtype=np.float64)[rank::world] * 0.1 + 1e-17
    merged = gather_scores(values, info)
    np.save(f"{out}/{rank}.npy", merged)
    shutdown(info)


def test_gather_scores_merges_disjoint_shares_exactly_across_gloo_ranks(tmp_path):
    import numpy as np
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, f"file://{tmp_path}/init", str(tmp_path)), nprocs=2)
    expected = np.arange(7, dtype=np.float64) * 0.1 + 1e-17
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"{rank}.npy"), expected)


def test_gather_scores_single_process_returns_its_input():
    import numpy as np

    from pgolf.dist import DistInfo, gather_scores

    values = np.array([1.0, np.nan])
    assert gather_scores(values, DistInfo(0, 1, 0, None, None)) is values
