"""The record stack's training schedule and document-packed loader: progressive context, the
recurrence switch-on, packed batches, and the record's optimizer values pinned against pgolf keys."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from pgolf.config.model import ModelParams
from pgolf.config.train import AdamGroupParams, MuonParams, OptimParams, TrainParams
from pgolf.data.shards import read_shard, write_shard
from pgolf.dist import DistInfo, join_group, shutdown
from pgolf.errors import DataError
from pgolf.model import GPT
from pgolf.model.checkpoint import load_model
from pgolf.optim import assign_groups, build_optimizers, set_schedule
from pgolf.optim.muon import POLAR_EXPRESS_COEFFICIENTS
from pgolf.train.data import StreamPosition, TokenStream
from pgolf.train.ema import EMA
from pgolf.train.loop import Trainer, next_token_loss, train
from pgolf.train.packed import PackedBatches, take_document_span
from pgolf.train.schedule import lr_scale, muon_momentum, recurrence_on, seq_len_at, settings_at
from train_helpers import VOCAB, make_shards, tiny_params

torch.set_num_threads(1)
CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)
BOS = 1
DOC_MODEL = dict(layers=2, width=32, heads=2, kv_heads=1, doc_attention=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))


def document_stream(n: int, seed: int) -> np.ndarray:
    """Documents of 3..80 tokens, each BOS then a Markov chain over ids 2..VOCAB-1 (no BOS inside)."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while len(out) < n:
        token = int(rng.integers(2, VOCAB))
        doc = [BOS, token]
        for _ in range(int(rng.integers(1, 79))):
            token = 2 + (3 * token + int(rng.integers(0, 3))) % (VOCAB - 2)
            doc.append(token)
        out.extend(doc)
    return np.asarray(out[:n], dtype=np.int64)


@pytest.fixture(scope="module")
def doc_shards(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("docs")
    write_shard(directory / "fineweb_val_000000.bin", document_stream(3000, 0))
    for i in range(2):
        # Each training shard opens mid-document (as shards cut from one stream do).
        write_shard(directory / f"fineweb_train_{i:06d}.bin", document_stream(6000 + 37, i + 1)[37:])
    (directory / "manifest.json").write_text(f'{{"vocab_size": {VOCAB}, "bos_id": {BOS}}}')
    return directory


def train_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("fineweb_train_*.bin"))


# -- the default run, frozen ------------------------------------------------------------------------

def test_default_run_is_bit_for_bit_the_code_at_4de722e(shards, tmp_path):
    """Every new option off must leave the numerics exactly as they were. These are the losses the
    code at commit 4de722e (before any record-stack option was wired in) gives for this 30-step tiny
    run with one thread, computed from that commit's tree and frozen here. 30 steps rather than 12:
    a reordering of float sums (e.g. computing c_v before c_q and c_k, which changes the order in
    which the input's gradient accumulates) first shows in the last bits after ~20 steps."""
    result = train(tiny_params(tmp_path, iterations=30), shards, tmp_path / "out", CPU)
    assert (result.train_loss, result.val_loss) == (1.1536898612976074, 1.154665768146515)


# -- progressive context ----------------------------------------------------------------------------

lengths = st.integers(2, 4096)
schedules = st.lists(st.tuples(st.floats(0.0, 0.999, allow_nan=False), lengths), max_size=5, unique_by=lambda t: t[0]).map(sorted)


@settings(max_examples=200, deadline=None)
@given(schedule=schedules, seq_len=lengths, p=st.floats(0.0, 1.0))
def test_seq_len_at_is_piecewise_constant_from_the_last_point_reached(schedule, seq_len, p):
    got = seq_len_at(p, seq_len, schedule)
    assert got in {seq_len} | {length for _, length in schedule}
    if not schedule or p < schedule[0][0]:
        assert got == seq_len
    # Constant on [point_i, point_i+1): the value at each point holds until the next.
    for (at, length), nxt in zip(schedule, [a for a, _ in schedule[1:]] + [1.0 + 1e-9]):
        if at <= p < nxt:
            assert got == length == seq_len_at(at, seq_len, schedule)


@settings(max_examples=200, deadline=None)
@given(schedule=schedules, seq_len=lengths, a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_seq_len_at_is_non_decreasing_when_the_schedule_is(schedule, seq_len, a, b):
    schedule = [(at, max(seq_len, length)) for at, length in schedule]
    schedule = [(at, max(length for _, length in schedule[: i + 1])) for i, (at, _) in enumerate(schedule)]
    lo, hi = min(a, b), max(a, b)
    assert seq_len_at(lo, seq_len, schedule) <= seq_len_at(hi, seq_len, schedule)


def test_seq_len_schedule_2014_example():
    schedule = [[0.1, 2048], [0.7, 3072]]
    assert [seq_len_at(p, 1024, schedule) for p in (0.0, 0.0999, 0.1, 0.5, 0.6999, 0.7, 1.0)] == [1024, 1024, 2048, 2048, 2048, 3072, 3072]
    params = TrainParams(seq_len=1024, seq_len_schedule=schedule, batch_tokens=786432, grad_accum_steps=8, val_batch_tokens=3072 * 8)
    assert params.final_seq_len == 3072 and params.seq_len_schedule == [(0.1, 2048), (0.7, 3072)]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"seq_len_schedule": [[0.5, 48]]}, r"seq_len_schedule: seq_len 48 at progress 0.5 does not divide the micro-batch of 512 tokens"),
        ({"seq_len_schedule": [[0.5, 64], [0.2, 128]]}, "seq_len_schedule: progress points must increase"),
        ({"seq_len_schedule": [[1.0, 64]]}, "less than 1"),
        ({"seq_len_schedule": [[0.5, 1]]}, "greater than or equal to 2"),
        ({"seq_len_schedule": [[0.5, 256]], "val_batch_tokens": 128}, r"multiple of the final seq_len \* nproc \* nnodes \(256\)"),
        ({"loader": "packed"}, "loader: packed needs model.doc_attention: true"),
        ({"loader": "shuffled"}, "loader"),
        ({"final_lr_mode": "cosine"}, "final_lr_mode"),
    ],
)
def test_schedule_and_loader_params_reject_malformed(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_params(tmp_path, **bad)


def test_seq_len_schedule_trains_at_each_length_with_the_same_tokens(shards, tmp_path):
    """Rows follow the schedule by progress, the tokens of every step are those of a run without
    it (batch_tokens constant), and validation runs at the final length."""
    def run(**overrides) -> tuple[list[tuple[int, ...]], StreamPosition, Trainer]:
        trainer = Trainer(tiny_params(tmp_path, iterations=8, val_every=0, **overrides), shards, tmp_path / "o", CPU, None)
        shapes, original = [], trainer.batches.next

        def spy(seq_len=None):
            batch = original(seq_len)
            shapes.append(tuple(batch.x.shape))
            return batch

        trainer.batches.next = spy
        trainer.run()
        return shapes, trainer.batches.stream.position, trainer

    plain_shapes, plain_end, _ = run()
    shapes, end, trainer = run(seq_len_schedule=[[0.25, 64], [0.75, 128]])
    assert plain_shapes == [(16, 32)] * 8
    assert shapes == [(16, 32)] * 2 + [(8, 64)] * 4 + [(4, 128)] * 2  # progress = step/8 before each step
    assert end == plain_end
    assert trainer.val_tokens.numel() == 1024 + 1 and trainer.params.final_seq_len == 128


# -- depth recurrence switch-on ---------------------------------------------------------------------

def test_settings_follow_the_clock_under_a_wallclock_cap(tmp_path):
    params = tiny_params(
        tmp_path, iterations=20000, max_wallclock_seconds=600.0, warmdown_fraction=0.85, final_lr_fraction=0.1, final_lr_mode="clamp",
        seq_len_schedule=[[0.1, 64], [0.7, 128]], model=dict(layers=6, width=32, heads=2, kv_heads=1, recur_start=3, recur_end=5, recur_loops=2, recur_from_progress=0.35),
    )
    early, mid, late = (settings_at(params, 100, s) for s in (30.0, 300.0, 560.0))
    assert (early.seq_len, early.recurrence, early.lr_scale) == (32, False, 1.0)
    assert (mid.seq_len, mid.recurrence, mid.lr_scale) == (64, True, pytest.approx(0.5 / 0.85))
    assert (late.seq_len, late.recurrence, late.lr_scale) == (128, True, 0.1)
    assert settings_at(tiny_params(tmp_path), 0, 0.0).recurrence is None  # no recurrence: never switched
    assert not recurrence_on(0.3499, 0.35) and recurrence_on(0.35, 0.35) and recurrence_on(0.0, 0.0)


def test_recurrence_switches_on_during_training_and_stays_on_for_evaluation(shards, tmp_path):
    model = dict(layers=3, width=32, heads=2, kv_heads=1, recur_start=1, recur_end=1, recur_loops=1, recur_from_progress=0.5)
    params = tiny_params(tmp_path, iterations=8, val_every=2, model=model)
    trainer = Trainer(params, shards, tmp_path / "o", CPU, None)
    switches, states_at_validation = [], []
    original_set, original_validate = trainer.model.set_recurrence, trainer.validate

    def set_recurrence(active: bool) -> None:
        switches.append((trainer.step, active))
        original_set(active)

    def validate() -> float:
        states_at_validation.append(trainer.model.recurrence_active)
        return original_validate()

    trainer.model.set_recurrence, trainer.validate = set_recurrence, validate
    trainer.run()
    assert switches == [(0, False), (4, True)]  # set before step 0, switched before step 4 (progress 0.5)
    assert states_at_validation == [False, False, True, True]  # after steps 2, 4 and 6 as trained; the final one on
    assert load_model(tmp_path / "o" / "checkpoint").recurrence_active


# -- document-packed batches -----------------------------------------------------------------------

def test_packed_rows_are_contiguous_stream_spans_entered_at_a_shards_first_bos(doc_shards):
    paths = train_paths(doc_shards)
    shards = [np.asarray(read_shard(path), dtype=np.int64) for path in paths]
    first_bos = [int(np.flatnonzero(tokens == BOS)[0]) for tokens in shards]
    assert min(first_bos) > 0  # the shards open mid-document: the loader skips to the first BOS
    batches = PackedBatches(TokenStream(paths), CPU, 256, 32, BOS)
    shard, start = 0, first_bos[0]
    for step in range(50):  # wraps around both shards
        batch = batches.next()
        if start + 257 > len(shards[shard]):  # a span never crosses a shard's end: next shard, first BOS
            shard = (shard + 1) % len(paths)
            start = first_bos[shard]
        if start == first_bos[shard]:
            assert batch.x[0, 0] == BOS, step
        span = torch.from_numpy(shards[shard][start : start + 257])
        assert batch.x.shape == (1, 256) and torch.equal(batch.x[0], span[:-1]) and torch.equal(batch.y[0], span[1:])
        start += 257
    assert batches.stream.position == StreamPosition(shard, start) and step // 22 >= 2


@settings(max_examples=30, deadline=None)
@given(seq_len=st.integers(1, 300), rounds=st.integers(1, 12))
def test_packed_segments_keep_documents_apart_and_pieces_within_seq_len(doc_shards, seq_len, rounds):
    batches = PackedBatches(TokenStream(train_paths(doc_shards)), CPU, 256, 32, BOS)
    for _ in range(rounds):
        batch = batches.next(seq_len)
    x, seg = batch.x[0], batch.segments[0]
    assert seg[0] == 0 and bool((seg.diff() >= 0).all()) and bool((seg.diff() <= 1).all())
    starts = torch.cat((torch.tensor([True]), seg.diff() == 1))
    assert bool(starts[x == BOS].all())  # every BOS opens a segment: no attention across it
    assert int(torch.bincount(seg).max()) <= seq_len


def test_packed_tokens_are_world_size_independent_and_resume_exactly(doc_shards):
    paths = train_paths(doc_shards)
    one = PackedBatches(TokenStream(paths), CPU, 256, 32, BOS)
    two = [PackedBatches(TokenStream(paths), DistInfo(r, 2, r, torch.device("cpu"), None), 256, 32, BOS) for r in range(2)]
    for _ in range(15):  # through a shard change
        rows = [one.next(), one.next()]
        for rank in range(2):
            batch = two[rank].next()
            assert torch.equal(batch.x, rows[rank].x) and torch.equal(batch.segments, rows[rank].segments)
    resumed = PackedBatches(TokenStream(paths, one.stream.position), CPU, 256, 32, BOS)
    for _ in range(10):
        assert torch.equal(resumed.next().x, one.next().x)


def test_packed_span_too_long_for_every_shard_is_a_data_error(doc_shards):
    with pytest.raises(DataError, match=r"no training shard holds a BOS \(id 1\) followed by 7000 more tokens"):
        take_document_span(TokenStream(train_paths(doc_shards)), 7001, BOS)


def test_packed_training_with_document_attention_learns(doc_shards, tmp_path):
    result = train(tiny_params(tmp_path, iterations=30, loader="packed", model=DOC_MODEL), doc_shards, tmp_path / "p", CPU)
    assert max(result.val_loss, result.train_loss) < np.log(VOCAB) - 1.0  # well below a uniform guess, where it starts


def test_packed_steps_with_a_recurrence_switch_compile_without_graph_breaks(doc_shards, tmp_path):
    """The CUDA path compiles the model: the loop's call with segments and the switch trace whole."""
    model = dict(DOC_MODEL, layers=3, recur_start=1, recur_end=1, recur_loops=1, recur_from_progress=0.5)
    params = tiny_params(tmp_path, iterations=4, val_every=0, loader="packed", model=model, seq_len_schedule=[[0.5, 64]])
    trainer = Trainer(params, doc_shards, tmp_path / "o", CPU, None)
    eager = Trainer(params, doc_shards, tmp_path / "e", CPU, None)
    trainer.forward = torch.compile(trainer.model, backend="eager", fullgraph=True)  # validation
    trainer.loss_of = torch.compile(next_token_loss, backend="eager", fullgraph=True)  # training: model + loss in one graph
    assert trainer.run().train_loss == pytest.approx(eager.run().train_loss, abs=1e-5)


def _packed_params(tmp: Path, **overrides) -> TrainParams:
    return tiny_params(tmp, iterations=6, grad_accum_steps=2, loader="packed", model=DOC_MODEL, seq_len_schedule=[[0.5, 64]], resume=False, **overrides)


def _packed_worker(rank: int, init_file: str, shards: str, out: str, tmp: str) -> None:
    torch.set_num_threads(1)
    info = join_group(rank, 2, rank, "cpu", f"file://{init_file}")
    try:
        result = train(_packed_params(Path(tmp), nproc=2), Path(shards), Path(out), info)
        if info.is_main:
            Path(out, "result.json").write_text(json.dumps(result.metrics()))
    finally:
        shutdown(info)


def test_packed_two_gloo_processes_equal_one_process_with_double_accumulation(doc_shards, tmp_path):
    mp.spawn(_packed_worker, args=(str(tmp_path / "init"), str(doc_shards), str(tmp_path / "two"), str(tmp_path)), nprocs=2, join=True)
    one = train(_packed_params(tmp_path), doc_shards, tmp_path / "one", CPU)
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["tokens_seen"] == one.tokens_seen and two["val_loss"] == pytest.approx(one.val_loss, abs=1e-5)
    w1 = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "checkpoint" / "model.safetensors"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


class _InterruptAt(logging.Handler):
    """Sends SIGINT to this process when the loop logs `step: N train_loss` (a real signal)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.marker = f"step: {step} train_loss"

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.marker):
            os.kill(os.getpid(), signal.SIGINT)


def test_packed_run_with_schedules_resumes_exactly(doc_shards, tmp_path):
    """Packed batches, a length schedule and recurrence switching on after the interrupt: the
    resumed run ends with the uninterrupted run's weights."""
    model = dict(DOC_MODEL, layers=3, recur_start=1, recur_end=1, recur_loops=1, recur_from_progress=0.6)
    params = tiny_params(tmp_path, iterations=12, loader="packed", model=model, seq_len_schedule=[[0.3, 64]], ema_decay=0.9)
    straight = train(params, doc_shards, tmp_path / "straight", CPU)
    logger = logging.getLogger("pgolf.train.loop")
    handler, level = _InterruptAt(5), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(params, doc_shards, tmp_path / "resumed", CPU)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    resumed = train(params, doc_shards, tmp_path / "resumed", CPU)
    assert resumed.resumed_from_step == 6 and resumed.val_loss == straight.val_loss
    ws = load_file(str(tmp_path / "straight" / "checkpoint" / "model.safetensors"))
    wr = load_file(str(tmp_path / "resumed" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(ws[k], wr[k]) for k in ws)


# -- the record's optimizer and schedule values ----------------------------------------------------

RECORD_POLAR_EXPRESS = (  # the records' Newton-Schulz schedule (PR #1344 via #1787), as printed there
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def test_polar_express_coefficients_are_the_records_and_configurable():
    assert POLAR_EXPRESS_COEFFICIENTS == RECORD_POLAR_EXPRESS
    muon = MuonParams(ns_steps=5, ns_coefficients=[list(t) for t in RECORD_POLAR_EXPRESS])
    assert muon.ns_coefficients[0][0] == 8.156554524902461


@settings(max_examples=200, deadline=None)
@given(p=st.floats(0.0, 1.0), warmdown=st.floats(0.01, 1.0), floor=st.floats(0.0, 1.0))
def test_clamped_warmdown_is_the_records_min_lr_formula(p, warmdown, floor):
    record = max((1.0 - p) / warmdown, floor) if p >= 1.0 - warmdown else 1.0  # PR #1787's lr_mul
    assert lr_scale(0, p, 0, warmdown, floor, "clamp") == pytest.approx(record, abs=1e-12)
    linear = lr_scale(0, p, 0, warmdown, floor, "linear")
    assert floor - 1e-12 <= linear <= 1.0 + 1e-12 and lr_scale(0, p, 0, warmdown, floor) == linear


def test_record_momentum_warmup_starts_at_its_start_value():
    assert muon_momentum(0, 0.92, 0.97, 1500) == 0.92
    assert muon_momentum(750, 0.92, 0.97, 1500) == pytest.approx(0.945)
    assert muon_momentum(1500, 0.92, 0.97, 1500) == muon_momentum(9999, 0.92, 0.97, 1500) == 0.97


def test_weight_decay_is_decoupled_per_group_and_follows_the_lr_schedule():
    """With zero gradients Adam's and Muon's updates vanish: only p *= 1 - lr*scale*wd remains,
    each group with its own decay (records: Muon 0.095, embeddings 0.085, scalars 0.02)."""
    torch.manual_seed(0)
    model = GPT(ModelParams(vocab_size=VOCAB, layers=2, width=32, heads=2, kv_heads=1))
    optim = OptimParams(
        matrix=MuonParams(weight_decay=0.095), embed=AdamGroupParams(lr=0.03, weight_decay=0.085, beta2=0.99),
        scalar=AdamGroupParams(lr=0.02, weight_decay=0.02, beta2=0.99),
    )
    optimizers = build_optimizers(model, optim)
    set_schedule(optimizers, 0.5, 0.9)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for opt in optimizers:
        opt.step()
    factors = {"embed": 1 - 0.5 * 0.03 * 0.085, "matrix": 1 - 0.5 * 0.04 * 0.095, "scalar": 1 - 0.5 * 0.02 * 0.02}
    adam = [g for opt in optimizers for g in opt.param_groups if g["group_name"] != "matrix"]
    assert all(g["betas"] == (0.9, 0.99) and g["weight_decay"] == getattr(optim, g["group_name"]).weight_decay for g in adam)
    for group, members in assign_groups(model).items():
        for name, param in members:
            assert torch.allclose(param, before[name] * factors[group], rtol=0, atol=1e-7), name


def test_gradient_clipping_bounds_the_global_norm_of_the_step(shards, tmp_path):
    trainer = Trainer(tiny_params(tmp_path, optim=dict(grad_clip_norm=0.3)), shards, tmp_path / "o", CPU, None)
    trainer.train_step()
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters() if p.grad is not None]))
    assert float(total) == pytest.approx(0.3, rel=1e-4)  # the unclipped gradient of an untrained model is far larger


def test_ema_is_the_records_lerp_from_the_initial_weights():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    ema = EMA(model, 0.9965)
    torch.nn.init.constant_(model.weight, 3.0)
    ema.update(model)
    assert torch.allclose(ema.state_dict()["weight"], torch.full((1, 2), 0.9965 * 1.0 + 0.0035 * 3.0))
