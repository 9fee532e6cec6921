"""Muon sharded across ranks: each rank orthogonalizes its share, the updates are summed, every
rank applies all of them. 2 and 4 gloo processes equal one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from pgolf.dist import DistInfo, join_group, shutdown, sum_in_place
from pgolf.model.checkpoint import MODEL_FILE, STATE_FILE
from pgolf.optim import Muon
from pgolf.optim.muon import Shard, assign_owners, newton_schulz_cost
from pgolf.train.loop import train
from train_helpers import make_shards, tiny_params

torch.set_num_threads(1)
STEPS = 4
ACCUM = 4  # the global batch: 4 micro-batches, split over 1, 2 or 4 ranks
TOLERANCE = 1e-5
SHAPES = [(16, 8), (8, 24), (32, 32), (4, 4), (24, 8), (8, 8), (12, 20)]


def _matrices(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=gen)) for shape in SHAPES]


def _run_muon(params: list[torch.nn.Parameter], shard: Shard | None, steps: int) -> Muon:
    """`steps` Muon steps with the same pseudo-random gradients on every rank."""
    opt = Muon(params, lr=0.02, momentum=0.9, weight_decay=0.1, row_normalize=True, shard=shard)
    gen = torch.Generator().manual_seed(123)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return opt


def _worker(rank: int, world_size: int, init_file: str, shards: str, out: str, tmp: str) -> None:
    torch.set_num_threads(1)
    info = join_group(rank, world_size, rank, "cpu", f"file://{init_file}")
    try:
        # the optimizer alone: the same weights as one process, bit for bit; momentum only on owners
        shard = Shard(rank, world_size, lambda flat: sum_in_place(flat, info))
        params = _matrices(0)
        opt = _run_muon(params, shard, STEPS)
        owners = opt.owners()
        held = [i for i, p in enumerate(params) if "momentum_buffer" in opt.state.get(p, {})]
        with opt.full_state():
            whole = [i for i, p in enumerate(params) if "momentum_buffer" in opt.state.get(p, {})]
            buffers = [opt.state[p]["momentum_buffer"].clone() for p in params]
        after = [i for i, p in enumerate(params) if "momentum_buffer" in opt.state.get(p, {})]
        torch.save({"weights": [p.detach() for p in params], "owners": owners, "held": held, "whole": whole, "after": after, "buffers": buffers}, Path(out) / f"muon_{rank}.pt")
        # the whole training loop: the same global batch over world_size ranks
        train_params = tiny_params(Path(tmp), iterations=STEPS, grad_accum_steps=ACCUM, nproc=world_size, resume=False)
        result = train(train_params, Path(shards), Path(out), info)
        if info.is_main:
            Path(out, "result.json").write_text(json.dumps(result.metrics()))
    finally:
        shutdown(info)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    shards = make_shards(tmp / "shards")
    single = DistInfo(0, 1, 0, torch.device("cpu"), None)
    result = train(tiny_params(tmp, iterations=STEPS, grad_accum_steps=ACCUM, resume=False), shards, tmp / "out", single)
    params = _matrices(0)
    opt = _run_muon(params, None, STEPS)
    return shards, tmp / "out", result, params, opt


@pytest.mark.parametrize("world_size", [2, 4])
def test_muon_shard_gloo_processes_equal_one_process(world_size, one_process, tmp_path):
    shards, one_dir, one, ref_params, ref_opt = one_process
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(world_size, str(tmp_path / "init"), str(shards), str(out), str(tmp_path)), nprocs=world_size, join=True)
    ranks = [torch.load(out / f"muon_{r}.pt") for r in range(world_size)]
    owners = ranks[0]["owners"]
    assert sorted(set(owners)) == list(range(world_size))  # 7 matrices: every rank has work
    for rank, got in enumerate(ranks):
        assert got["owners"] == owners  # every rank agrees on the assignment
        for w, ref in zip(got["weights"], ref_params, strict=True):
            assert torch.equal(w, ref.detach())  # exact: non-owners add zeros
        # memory: a rank holds momentum for its own matrices only, whole only while saving
        assert got["held"] == [i for i, o in enumerate(owners) if o == rank]
        assert got["whole"] == list(range(len(SHAPES)))
        assert got["after"] == got["held"]
        for buf, p in zip(got["buffers"], ref_params, strict=True):
            assert torch.equal(buf, ref_opt.state[p]["momentum_buffer"])
    many = json.loads((out / "result.json").read_text())
    assert many["steps"] == one.steps == STEPS and many["tokens_seen"] == one.tokens_seen
    assert many["train_loss"] == pytest.approx(one.train_loss, abs=TOLERANCE)
    for name in (MODEL_FILE, STATE_FILE):  # the weights, and Muon's momentum gathered into the checkpoint
        w1 = load_file(str(one_dir / "checkpoint" / name))
        wn = load_file(str(out / "checkpoint" / name))
        keys = [k for k in w1 if w1[k].is_floating_point() and k not in ("train_seconds",)]
        assert {k for k in keys if k.startswith("optim/matrix/")} <= set(wn)
        for key in keys:
            assert torch.allclose(w1[key], wn[key], atol=TOLERANCE), key


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 10_000), max_size=30), st.integers(1, 8))
def test_muon_shard_assignment_covers_every_matrix_once_and_balances(costs, world_size):
    owners = assign_owners(costs, world_size)
    assert len(owners) == len(costs) and all(0 <= o < world_size for o in owners)
    assert owners == assign_owners(costs, world_size)  # deterministic: every rank computes the same
    load = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(world_size)]
    if costs:  # greedy largest-first: no rank exceeds another by more than the largest matrix
        assert max(load) - min(load) <= max(costs)


def test_muon_shard_assignment_spreads_equal_matrices_round_robin():
    assert assign_owners([5] * 6, 4) == [0, 1, 2, 3, 0, 1]
    assert assign_owners([1, 100, 1], 2) == [1, 0, 1]
    with pytest.raises(ValueError, match="world_size"):
        assign_owners([1], 0)


def test_muon_shard_cost_is_newton_schulz_work():
    assert newton_schulz_cost((8, 32)) == newton_schulz_cost((32, 8)) == 8 * 32 * 8


def test_muon_shard_of_one_rank_is_the_plain_optimizer_bit_for_bit():
    plain, one = _matrices(1), _matrices(1)
    _run_muon(plain, None, 3)
    opt = _run_muon(one, Shard(0, 1, lambda flat: pytest.fail("a single rank must not communicate")), 3)
    assert opt.shard is None
    for a, b in zip(plain, one, strict=True):
        assert torch.equal(a, b)


def test_muon_shard_owner_alone_keeps_momentum_and_others_drop_loaded_state():
    """A non-owner with a buffer (loaded from a checkpoint) drops it at its next step."""
    params = _matrices(2)
    summed: list[torch.Tensor] = []
    opt = Muon(params, lr=0.01, shard=Shard(1, 2, summed.append))
    for p in params:
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        p.grad = torch.ones_like(p)
    opt.step()
    mine = [o == 1 for o in opt.owners()]
    assert [("momentum_buffer" in opt.state.get(p, {})) for p in params] == mine
    assert len(summed) == 1 and summed[0].numel() == sum(p.numel() for p in params)
    offsets = torch.tensor([0] + [p.numel() for p in params]).cumsum(0)
    for i, p in enumerate(params):  # a non-owner's slice of the buffer is zero before the sum
        block = summed[0][offsets[i] : offsets[i + 1]]
        assert bool(block.abs().sum() > 0) == mine[i]
