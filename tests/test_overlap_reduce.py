"""The training step's speed work (issue 14): gradient reduction overlapped with backward
(pgolf/train/ddp.py), Adam's foreach/fused kernels, Muon's update and the loss under torch.compile,
and no host syncs inside a step."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from pgolf.config.model import ModelParams
from pgolf.config.train import OptimParams
from pgolf.dist import DistInfo, join_group, shutdown, start_sum
from pgolf.model import GPT
from pgolf.optim import Muon, build_optimizers, muon_update
from pgolf.train.ddp import OverlappedReduce, plan_buckets
from pgolf.train.loop import Trainer, next_token_loss
from train_helpers import make_shards, tiny_params

torch.set_num_threads(1)


@given(st.lists(st.integers(1, 50), max_size=30), st.integers(1, 6), st.integers(1, 200))
def test_plan_buckets_covers_every_parameter_once_last_first_within_the_cap(numels, element_bytes, cap):
    buckets = plan_buckets(numels, element_bytes, cap)
    assert [i for bucket in buckets for i in bucket] == list(reversed(range(len(numels))))
    for bucket, following in zip(buckets, [*buckets[1:], None], strict=False):
        size = sum(numels[i] for i in bucket) * element_bytes
        assert size <= cap or len(bucket) == 1
        if following is not None:  # it closed only because the next parameter did not fit
            assert size + numels[following[0]] * element_bytes > cap


def test_plan_buckets_rejects_a_cap_below_one_byte():
    with pytest.raises(ValueError, match="bucket cap"):
        plan_buckets([4], 4, 0)


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelParams(vocab_size=48, layers=2, width=32, heads=2, kv_heads=1))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 48, (2, 16), generator=gen), torch.randint(0, 48, (2, 16), generator=gen)) for _ in range(n)]


def _accumulate(model: GPT, batches: list, reducer: OverlappedReduce | None) -> None:
    for i, (x, y) in enumerate(batches):
        if reducer is not None and i == len(batches) - 1:
            reducer.arm()
        (next_token_loss(model, x, y) / len(batches)).backward()
    if reducer is not None:
        reducer.finish()


def test_buckets_start_during_the_last_backward_only_and_finish_writes_the_mean():
    """A fake two-rank sum (both ranks hold the same gradients: x + x) over world size 2 gives back
    the local gradients bit for bit; the first bucket (the last layers) starts while backward still
    has the embedding's last contribution to add; nothing starts on the other micro-batches."""
    model, batches = _model(), _batches(3)
    reference = _model()
    _accumulate(reference, batches, None)
    emb = model.tok_emb.weight
    seen: list[tuple[int, torch.Tensor | None]] = []

    def fake_sum(flat: torch.Tensor):
        seen.append((flat.numel(), None if emb.grad is None else emb.grad.clone()))
        flat.mul_(2)
        return lambda: None

    reducer = OverlappedReduce(model.parameters(), fake_sum, world_size=2, cap_bytes=4096)
    assert len(reducer.buckets) > 2
    for i, (x, y) in enumerate(batches[:-1]):
        (next_token_loss(model, x, y) / 3).backward()
    assert seen == []  # no_sync: the first micro-batches only accumulate
    reducer.arm()
    (next_token_loss(model, *batches[-1]) / 3).backward()
    assert len(seen) == len(reducer.buckets)  # every bucket started from the hooks, before finish
    assert not torch.equal(seen[0][1], emb.grad)  # the embedding's gradient was not complete yet
    reducer.finish()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    assert sum(n for n, _ in seen) == sum(p.numel() for p in model.parameters())


def test_buckets_start_in_index_order_whatever_order_the_hooks_fire():
    a, b, c = (torch.nn.Parameter(torch.full((4,), float(v))) for v in (1, 2, 3))
    order: list[float] = []

    def record(flat: torch.Tensor):
        order.append(float(flat[0]))
        return lambda: None

    reducer = OverlappedReduce([a, b, c], record, world_size=1, cap_bytes=16)  # one parameter per bucket: c, b, a
    reducer.arm()
    for p in (a, b):  # a's and b's buckets are full first, but c's (bucket 0) must go first
        (p * p).sum().backward()
    assert order == []
    (c * c).sum().backward()
    assert order == [6.0, 4.0, 2.0]  # gradients 2c, 2b, 2a
    reducer.finish()
    with pytest.raises(RuntimeError, match="without arm"):
        reducer.finish()


def test_finish_starts_buckets_whose_parameters_got_no_gradient():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(5))
    started: list[int] = []
    reducer = OverlappedReduce([used, unused], lambda flat: started.append(flat.numel()) or (lambda: None), world_size=1, cap_bytes=4)
    reducer.arm()
    used.sum().backward()
    assert started == []  # bucket 0 (unused) never fills, so bucket 1 waits behind it
    reducer.finish()
    assert started == [3] and unused.grad is None
    reducer.remove()
    reducer.arm()
    used.sum().backward()
    assert started == [3]  # hooks removed


def _gloo_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    info = join_group(rank, world, rank, "cpu", f"file://{init_file}")
    try:
        grads = {}
        for r in range(world):  # every rank knows every rank's gradients: the expected mean is exact
            model, (x, y) = _model(), _batches(world)[r]
            next_token_loss(model, x, y).backward()
            grads[r] = [p.grad.clone() for p in model.parameters()]
        model = _model()
        reducer = OverlappedReduce(model.parameters(), functools.partial(start_sum, info=info), world, cap_bytes=8192)
        reducer.arm()
        next_token_loss(model, *_batches(world)[rank]).backward()
        reducer.finish()
        torch.save({"got": [p.grad for p in model.parameters()], "expected": [sum(g[i] for g in grads.values()) / world for i in range(len(grads[0]))]}, Path(out) / f"{rank}.pt")
    finally:
        shutdown(info)


@pytest.mark.parametrize("world", [2, 4])
def test_two_and_four_gloo_processes_get_the_mean_gradient(tmp_path, world):
    mp.spawn(_gloo_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        saved = torch.load(tmp_path / f"{rank}.pt")
        for got, expected in zip(saved["got"], saved["expected"], strict=True):
            if world == 2:
                assert torch.equal(got, expected)  # a + b is b + a: bit for bit
            else:
                assert torch.allclose(got, expected, atol=1e-7, rtol=1e-6)


# -- Adam, Muon and the loss as the CUDA path runs them -----------------------------------------------
def test_adam_groups_use_foreach_on_cpu_and_stay_bit_equal_to_the_per_tensor_loop():
    model, twin = _model(), _model()
    ours, loops = build_optimizers(model, OptimParams()), build_optimizers(twin, OptimParams())
    adams = [group for opt in ours if isinstance(opt, torch.optim.AdamW) for group in opt.param_groups]
    assert adams and all(group["foreach"] and not group["fused"] for group in adams)
    for opt in loops:
        for group in opt.param_groups:
            if isinstance(opt, torch.optim.AdamW):
                group["foreach"] = False  # torch's per-tensor loop: what pgolf ran before
    for x, y in _batches(3):
        for m, opts in ((model, ours), (twin, loops)):
            for opt in opts:
                opt.zero_grad()
            next_token_loss(m, x, y).backward()
            for opt in opts:
                opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_muon_with_a_compiled_update_equals_the_eager_one_without_graph_breaks():
    gen = torch.Generator().manual_seed(3)
    shapes = [(16, 8), (8, 24), (12, 12)]
    runs = []
    for orthogonalize in (muon_update, torch.compile(muon_update, backend="eager", fullgraph=True)):
        params = [torch.nn.Parameter(torch.ones(s)) for s in shapes]
        opt = Muon(params, lr=0.02, row_normalize=True, orthogonalize=orthogonalize)
        gen.manual_seed(3)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs.append(params)
    for eager, compiled in zip(*runs, strict=True):
        assert torch.equal(eager, compiled)


def test_the_loss_compiles_whole_with_the_model_and_equals_eager():
    model, (x, y) = _model(), _batches(1)[0]
    compiled = torch.compile(next_token_loss, backend="eager", fullgraph=True)
    assert torch.equal(compiled(model, x, y), next_token_loss(model, x, y))


# -- host syncs ------------------------------------------------------------------------------------
SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")


def test_a_training_step_makes_no_host_sync(tmp_path, monkeypatch):
    """On CUDA each of these waits for the GPU to drain the queue. The optimizers' step counters
    (CPU tensors for torch's non-fused Adam) are excluded; everything else in a step is counted."""
    shards = make_shards(tmp_path / "shards")
    params = tiny_params(tmp_path, grad_accum_steps=2, optim={"grad_clip_norm": 1.0}, resume=False)
    trainer = Trainer(params, shards, tmp_path / "out", DistInfo(0, 1, 0, torch.device("cpu"), None), None)
    trainer.train_step()  # the optimizers' state exists from here on
    counters = {id(state["step"]) for opt in trainer.optimizers for state in opt.state.values() if "step" in state}
    calls: list[str] = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if id(self) not in counters:
                calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append("synchronize"))
    for _ in range(2):
        trainer.train_step()
    assert calls == []
