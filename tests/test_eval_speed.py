"""Evaluation at accelerator speed (pgolf/eval/accel.py): precision, compiled fixed shapes and their
padding, the vectorized batch layout, ranks (2 gloo processes), the stage's timing ledger and gap option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from eval_helpers import VOCAB, TinyCausalLM, make_workspace, random_stream
from hypothesis import given, settings
from hypothesis import strategies as st

import pgolf.eval.accel as accel
from pgolf.config.eval import EvalPlainParams, EvalSlidingParams, EvalTiltParams, EvalTTTParams
from pgolf.config.model import ModelParams
from pgolf.dist import join_group, shutdown
from pgolf.eval.accel import BUCKETS, WindowForward, compiles, padded_width, precision_context, resolved_precision
from pgolf.eval.methods import MethodOutcome
from pgolf.eval.run import counted_seconds, eval_stage, method_phases
from pgolf.eval.sliding import sliding_windows
from pgolf.eval.windows import PAD_ID, Window, run_windows, window_batch
from pgolf.model import GPT
from pgolf.runtime import evaluate_artifact

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
BF16_BPB_TOLERANCE = 1e-3


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelParams(vocab_size=VOCAB, layers=2, width=32, heads=2, kv_heads=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_auto_means_bf16_and_compile_on_cuda_fp32_and_eager_elsewhere():
    assert (resolved_precision("auto", CPU), resolved_precision("auto", CUDA)) == ("fp32", "bf16")
    assert (resolved_precision("bf16", CPU), resolved_precision("fp32", CUDA)) == ("bf16", "fp32")
    assert (compiles("auto", CPU), compiles("auto", CUDA), compiles("on", CPU), compiles("off", CUDA)) == (False, True, True, False)
    with precision_context("bf16", CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with precision_context("auto", CPU):
        assert not torch.is_autocast_enabled("cpu")


@given(width=st.integers(1, 5000), max_width=st.integers(1, 4096))
@settings(max_examples=200, deadline=None)
def test_padded_width_holds_the_batch_in_one_of_few_buckets(width: int, max_width: int):
    padded = padded_width(width, max_width)
    assert padded >= width
    if width >= max_width:
        assert padded == width
    else:
        assert padded <= max_width and padded < 2 * width + max_width / 2 ** (BUCKETS - 1)
    assert len({padded_width(w, max_width) for w in range(1, max_width + 1)}) <= BUCKETS


windows_strategy = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12), st.integers(0, 11)), min_size=1, max_size=6)


@given(spec=windows_strategy, extra_rows=st.integers(0, 3), extra_cols=st.integers(0, 5))
@settings(max_examples=100, deadline=None)
def test_window_batch_is_the_per_row_layout(spec, extra_rows: int, extra_cols: int):
    tokens = np.random.default_rng(0).integers(1, VOCAB, size=80)
    windows = [Window(s, s + n, s + 1 + k % n) for s, n, k in spec]
    start = np.array([w.start for w in windows])
    length = np.array([w.length for w in windows])
    rows, width = len(windows) + extra_rows, int(length.max()) + extra_cols
    b = window_batch(tokens, start, length, np.array([w.score_from for w in windows]), rows, width)
    want = np.full((rows, width), PAD_ID)
    positions = []
    for row, w in enumerate(windows):
        want[row, : w.length] = tokens[w.start : w.stop]
        positions += list(range(w.score_from, w.stop + 1))
    assert np.array_equal(b.inputs, want) and b.scored.shape == (len(windows), width)
    assert np.array_equal(b.positions, positions)


def test_a_position_scored_twice_is_refused_within_a_batch_and_across_batches():
    model, stream = TinyCausalLM(), random_stream([30], seed=1)
    windows = [Window(0, 10, 1), Window(0, 10, 5)]
    for batch_size in (1, 2):
        with pytest.raises(RuntimeError, match="rescore a position"):
            run_windows(model, stream, windows, batch_size)


@pytest.mark.parametrize("model_of", [TinyCausalLM, tiny_gpt])
def test_padding_content_never_reaches_a_real_position(model_of):
    """The causal model behind the padding claim: right-padding changes no real position's logits, bit for bit."""
    model = model_of()
    tokens = torch.from_numpy(random_stream([40], seed=2).tokens[:24])[None]
    padded = torch.cat([tokens, torch.full((1, 8), PAD_ID)], 1)
    other = torch.cat([tokens, torch.randint(1, VOCAB, (1, 8))], 1)
    with torch.no_grad():
        a, b = model(padded)[:, :24], model(other)[:, :24]
    assert torch.equal(a, b)


class CountingBackend:
    """A torch.compile backend that counts graphs (each one a compilation) and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph, example_inputs):
        self.graphs += 1
        return graph.forward


def test_compiled_forward_pads_to_fixed_shapes_compiles_once_per_shape_and_scores_the_same():
    torch._dynamo.reset()
    model, stream = TinyCausalLM(seed=3), random_stream([70, 3, 41, 9, 120, 25], seed=5)
    windows = sliding_windows(stream, 32, 8, doc_bounded=True)  # widths 2..32: several buckets
    backend = CountingBackend()
    forward = WindowForward(model, compiled=True, rows=4, max_width=32, backend=backend)
    padded = run_windows(model, stream, windows, 4, forward=forward)
    eager = run_windows(model, stream, windows, 4)
    assert np.array_equal(np.isnan(padded.nll), np.isnan(eager.nll))
    assert np.nanmax(np.abs(padded.nll - eager.nll)) < 1e-6
    assert {rows for rows, _ in forward.shapes} == {4} and 1 < len(forward.shapes) <= BUCKETS
    assert backend.graphs == len(forward.shapes)  # no recompilation per batch
    assert forward.warmup_seconds > 0


def test_compile_on_through_the_method_scores_as_eager_and_times_its_warmup(monkeypatch):
    """compile: on, through the registry (the legality probe and the real run share one compiled forward).
    The dynamo 'eager' backend stands in for inductor, whose C++ build takes ~50 s on this CPU."""
    torch._dynamo.reset()
    monkeypatch.setattr(accel, "COMPILE_BACKEND", "eager")
    model, stream = TinyCausalLM(seed=1), random_stream([90, 14, 60, 33], seed=6)
    base = {"window": 24, "stride": 8, "batch_size": 4, "legality_tokens": 120, "doc_bounded": True}
    on = evaluate_artifact("sliding", model, stream, EvalSlidingParams(**base, compile="on"))
    off = evaluate_artifact("sliding", model, stream, EvalSlidingParams(**base, compile="off"))
    assert on.result.val_bpb == pytest.approx(off.result.val_bpb, abs=1e-7)
    assert on.extra["legality"]["passed"] and on.phases["compile_warmup"] > 0
    assert "compile_warmup" not in off.phases and set(off.phases) == {"legality"}


@pytest.mark.parametrize(("method", "params"), [
    ("plain", EvalPlainParams(seq_len=32, batch_size=4, legality_tokens=100)),
    ("sliding", EvalSlidingParams(window=32, stride=8, batch_size=4, legality_tokens=100)),
    ("ttt", EvalTTTParams(chunk_tokens=8, window=32, batch_docs=3, lora_rank=2, legality_tokens=100)),
])
def test_bf16_autocast_scores_within_a_thousandth_of_a_bit_of_fp32(method, params):
    model, stream = tiny_gpt(), random_stream([120, 40, 90], seed=7)
    fp32 = evaluate_artifact(method, model, stream, params.model_copy(update={"precision": "fp32"}))
    bf16 = evaluate_artifact(method, model, stream, params.model_copy(update={"precision": "bf16"}))
    assert bf16.result.val_bpb != fp32.result.val_bpb  # autocast did run
    assert bf16.result.val_bpb == pytest.approx(fp32.result.val_bpb, abs=BF16_BPB_TOLERANCE)
    assert bf16.extra["legality"]["passed"]


def test_method_phases_carve_scoring_and_count_what_the_rules_count():
    class WithGlobalPhases(MethodOutcome):
        global_phase_seconds = [1.0, 2.0]

    outcome = WithGlobalPhases(None, 0.0, {}, {"legality": 4.0, "compile_warmup": 2.0, "precompute": 0.5})  # result not read
    phases = method_phases(outcome, 20.0)
    assert phases == {"legality": 4.0, "compile_warmup": 2.0, "precompute": 0.5, "global_phases": 3.0, "scoring": 10.5}
    assert counted_seconds({**phases, "precompute": 1.5, "gap": 9.0}) == 1.5 + 2.0 + 10.5 + 3.0


# -- ranks: 2 gloo processes against one --------------------------------------------------------------------
RANKED = {
    "sliding": EvalSlidingParams(window=24, stride=8, batch_size=3, legality_tokens=120, doc_bounded=True),
    "tilt": EvalTiltParams(window=24, stride=8, batch_size=3, legality_tokens=120, order=2, min_count=2, min_share=0.5),
    "plain": EvalPlainParams(seq_len=32, batch_size=64, legality_tokens=120),  # one batch: rank 1 scores nothing
}


def ranked_run(info=None) -> dict[str, list]:
    model, stream = TinyCausalLM(seed=1), random_stream([60, 5, 44, 80, 17, 30], seed=8, vocab=VOCAB)
    out = {}
    for name, params in RANKED.items():
        o = evaluate_artifact(name, model, stream, params, info)
        out[name] = [o.result.val_bpb, o.result.val_loss, o.result.scored_bytes, o.extra.get("val_bpb_no_tilt"),
                     o.extra["legality"]["passed"], o.extra["legality"]["full_stream_bad_positions"]]
    return out


def _ranks_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    info = join_group(rank, world, rank, "cpu", init)
    try:
        Path(out, f"{rank}.json").write_text(json.dumps(ranked_run(info)))
    finally:
        shutdown(info)


def test_two_gloo_ranks_give_bit_identical_scores_to_one_process(tmp_path):
    mp.spawn(_ranks_worker, args=(2, f"file://{tmp_path}/init", str(tmp_path)), nprocs=2, join=True)
    one = json.loads(json.dumps(ranked_run()))
    for rank in range(2):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == one  # every rank gets the merged scores
    assert all(row[4] and row[5] == 0 for row in one.values())


# -- the stage: timing ledger and the gap option ------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    return make_workspace(tmp_path_factory.mktemp("eval_speed"))


@pytest.mark.parametrize("gap", ["rescore", "off"])
def test_the_stage_times_each_phase_and_counts_only_what_the_rules_count(workspace, tmp_path, gap):
    params = EvalSlidingParams(window=64, stride=32, batch_size=16, legality_tokens=200, gap=gap)
    metrics = tmp_path / "eval_sliding.json"
    out = eval_stage("sliding", params, workspace["artifact"], workspace["shards"], workspace["tokenizer"],
                     workspace["checkpoint"], metrics)
    timing = json.loads((tmp_path / "timing" / "eval_sliding.json").read_text())
    phases = timing["phases"]
    assert set(phases) == {"precompute", "legality", "scoring"} | ({"gap"} if gap == "rescore" else set())
    assert timing["counted_seconds"] == pytest.approx(phases["precompute"] + phases["scoring"])
    assert (out["quantization_gap"] is None) == (gap == "off")
    assert json.loads(metrics.read_text())["quantization_gap"] == out["quantization_gap"]



@pytest.mark.slow  # ~12 s: torchrun and two workers importing torch on a 2-core machine
def test_the_stage_with_nproc_2_runs_two_torchrun_ranks_and_rank_0_writes_the_same_scores(workspace, tmp_path):
    """stages/eval.py with nproc 2 relaunches itself under torchrun (gloo on CPU); rank 0 writes what one process writes."""
    section = {"window": 64, "stride": 32, "batch_size": 4, "legality_tokens": 200, "gap": "off"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"eval_sliding": {**section, "nproc": 2}}))
    ws = [workspace[k] for k in ("artifact", "shards", "tokenizer", "checkpoint")]
    one = eval_stage("sliding", EvalSlidingParams(**section), *ws, tmp_path / "one" / "eval_sliding.json")
    metrics = tmp_path / "two" / "eval_sliding.json"
    args = ["--method", "sliding", "--artifact", ws[0].parent, "--shards", ws[1], "--tokenizer", ws[2], "--checkpoint", ws[3],
            "--metrics", metrics, "--params", tmp_path / "params.yaml"]
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "eval.py"), *map(str, args)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(metrics.read_text())
    assert two.pop("provenance")["device"]["count"] == 2
    assert two == json.loads(json.dumps(one))
