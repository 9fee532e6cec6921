"""pgolf plan (issue 16): the byte model's pure functions, the census against the quantizer, the
device table against its sources, --check, and the prediction against the committed default run."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.eval import EvalSlidingParams, EvalTTTParams
from pgolf.config.model import ModelParams
from pgolf.config.quantize import GroupQuant, QuantizeParams
from pgolf.config.train import TrainParams
from pgolf.errors import PgolfError
from pgolf.model.gpt import GPT
from pgolf.plan import add_plan_command, check_failed, check_plan, format_check, format_plan, make_plan
from pgolf.plan_bytes import PASSTHROUGH, census, embedding_coder_ratio, gaussian_symbol_entropy, group_bytes, lowrank_tensors
from pgolf.plan_table import BYTE_MODEL, DEVICES
from pgolf.plan_time import eval_forward_tokens, shape_of, train_flops_per_token, forward_flops_per_token, train_time
from pgolf.quant.apply import quantize_state

REPO = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=384, layers=2, width=64, heads=2, kv_heads=1)


@pytest.fixture(scope="module")
def default_plan() -> dict:
    return make_plan(REPO / "params.yaml", "cpu", REPO, REPO / "metrics")


def test_entropy_high_resolution_limit_is_the_sdclip_relation():
    # b - log2 k + c with c = log2(sqrt(2 pi e)) - 1 when qmax ~ 2^(b-1): fine steps, no clipping.
    for bits, k in ((8, 8.0), (8, 12.0), (7, 6.0)):
        qmax = 2 ** (bits - 1) - 1
        limit = math.log2(qmax) - math.log2(k) + 0.5 * math.log2(2 * math.pi * math.e)
        assert gaussian_symbol_entropy(bits, k) == pytest.approx(limit, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), k=st.floats(4.0, 40.0), dk=st.floats(1.05, 3.0), noise=st.floats(0.05, 3.0))
def test_entropy_is_bounded_and_monotone(bits, k, dk, noise):
    """Where clipping is negligible (k >= 4 row stds): heavy clipping piles mass into the end bins."""
    h = gaussian_symbol_entropy(bits, k)
    assert 0.0 <= h <= math.log2(2 ** bits - 1) + 1e-9
    assert gaussian_symbol_entropy(bits, k * dk) < h  # a coarser step: fewer bits
    assert gaussian_symbol_entropy(bits, k, noise) > h  # GPTQ's error feedback spreads the symbols
    if bits < 8:
        assert gaussian_symbol_entropy(bits + 1, k) > h


def test_embedding_ratio_interpolates_clamps_and_falls_back_to_the_default_corpus():
    curve = BYTE_MODEL.embedding_ratio["pydoc_topics"]
    (x0, y0), (x1, y1) = curve[:2]
    assert embedding_coder_ratio(10 ** x0, "pydoc_topics") == pytest.approx(y0)
    assert embedding_coder_ratio(10 ** ((x0 + x1) / 2), "pydoc_topics") == pytest.approx((y0 + y1) / 2)
    assert embedding_coder_ratio(0.0, "pydoc_topics") == pytest.approx(y0)
    assert embedding_coder_ratio(1e12, "pydoc_topics") == pytest.approx(curve[-1][1])
    assert embedding_coder_ratio(1e12, "sp8192") == embedding_coder_ratio(1e12, "*") == pytest.approx(BYTE_MODEL.embedding_ratio["*"][-1][1])


@pytest.mark.parametrize("config", [TINY, dict(vocab_size=1024), dict(vocab_size=512, layers=3, width=96, heads=4, kv_heads=2, mlp_mult=3.0, bigram_buckets=64, value_embed_layers=[1])])
def test_census_groups_as_the_quantizer(config):
    model, quantize = ModelParams(**config), QuantizeParams(method="rtn")
    torch.manual_seed(0)
    qm = quantize_state(GPT(model).state_dict(), {}, quantize, {})
    planned = census(model, quantize)
    assert {t.name: t.group for t in planned if t.group != PASSTHROUGH} == {n: q.group for n, q in qm.quantized.items()}
    assert {t.name for t in planned if t.group == PASSTHROUGH} == set(qm.passthrough)
    assert {t.name: t.shape for t in planned} == {**{n: tuple(q.q.shape) for n, q in qm.quantized.items()}, **{n: tuple(t.shape) for n, t in qm.passthrough.items()}}


def test_group_bytes_follow_bits_and_extras():
    model = ModelParams(**TINY)
    base = QuantizeParams()
    tensors = census(model, base)
    plain = group_bytes(tensors, base, {"attention", "mlp"}, 1000.0)
    finer = group_bytes(tensors, base.model_copy(update={"mlp": GroupQuant(bits=8, k=12.0)}), {"attention", "mlp"}, 1000.0)
    assert finer["mlp"].symbol_bytes > plain["mlp"].symbol_bytes and finer["attention"].total == plain["attention"].total
    lqer = base.model_copy(update={"lowrank_rank": 4, "lowrank_top": 2})
    assert len(lowrank_tensors(tensors, lqer)) == 2
    assert sum(g.extras_bytes for g in group_bytes(tensors, lqer, set(), 1000.0).values()) > 0
    assert all(g.extras_bytes == 0 for g in plain.values())


def test_device_rows_match_their_published_step_times():
    """The table's FLOP/s are the sources' tokens/s x this module's FLOPs of the reference shapes."""
    def flops(steps_s: float, tokens: int, context: int, **shape) -> float:
        model = ModelParams(**shape)
        return train_flops_per_token(shape_of(model, census(model, QuantizeParams())), model.layers, context) * tokens / steps_s
    frontier = dict(vocab_size=8192, layers=11, width=512, heads=8, kv_heads=4, mlp_mult=4.0, recur_start=3, recur_end=5, recur_loops=2)
    baseline = dict(vocab_size=1024, layers=9, width=512, heads=8, kv_heads=4)
    assert DEVICES["h100x8"].train_flops_per_s == pytest.approx(flops(0.1201, 786_432, 2048, **frontier), rel=0.01)
    assert DEVICES["h100x8-baseline"].train_flops_per_s == pytest.approx(flops(0.0435, 524_288, 1024, **baseline), rel=0.01)
    assert DEVICES["h200x1"].train_flops_per_s == pytest.approx(flops(0.3448, 524_288, 1024, **baseline), rel=0.01)
    model = ModelParams(**baseline)
    fwd = forward_flops_per_token(shape_of(model, census(model, QuantizeParams())), 9, 1024)
    assert DEVICES["h200x1"].eval_flops_per_s == pytest.approx(410_988 * fwd, rel=0.01)  # plain 1024, fp32


def test_wallclock_cap_ends_training_first():
    model = ModelParams(vocab_size=1024)
    shape = shape_of(model, census(model, QuantizeParams()))
    free = train_time(shape, model, TrainParams(iterations=1000), DEVICES["cpu"])
    assert (free.steps, free.stopped_by, free.tokens) == (1000, "iterations", 1000 * 4096)
    capped = train_time(shape, model, TrainParams(iterations=1000, max_wallclock_seconds=10.0), DEVICES["cpu"])
    assert capped.stopped_by == "wallclock" and capped.steps < 1000 and capped.seconds <= 10.0


def test_eval_cost_per_method():
    cpu = DEVICES["cpu"]
    # artifact + checkpoint (the gap): 2 x window/stride; TTT: frozen, adapted, checkpoint frozen + updates
    assert eval_forward_tokens("sliding", EvalSlidingParams(window=256, stride=64), cpu) == (8.0, 256)
    assert eval_forward_tokens("ttt", EvalTTTParams(window=256, chunk_tokens=128, lr=0.0), cpu) == (6.0, 256)
    assert eval_forward_tokens("ttt", EvalTTTParams(window=256, chunk_tokens=128), cpu)[0] == pytest.approx(2 * (3 + cpu.ttt_update_factor))


def test_default_plan_predicts_the_committed_pack(default_plan):
    """Issue 16's goal on the default params: within 2 % of metrics/pack.json (the default run's
    pack; its 6/6/7 @ k 12 was held out of the fit). bytes_code is measured, not predicted: when
    the sources changed since that pack, the model's prediction is compared with the run's code."""
    pack = json.loads((REPO / "metrics/pack.json").read_text())
    assert abs(default_plan["bytes_model"] + pack["bytes_code"] - pack["bytes_total"]) <= 0.02 * pack["bytes_total"]
    assert abs(default_plan["bytes_model"] - pack["bytes_model"]) <= 0.02 * pack["bytes_model"]
    rows = check_plan(default_plan, REPO / "metrics")
    assert not check_failed(rows, 2.0)
    text = format_plan(default_plan) + "\n" + format_check(rows, 2.0)
    assert len(text.splitlines()) <= 40 and max(map(len, text.splitlines())) <= 130


def _metrics(tmp_path: Path, plan: dict, factor: float, code: int | None = None) -> Path:
    (tmp_path / "pack.json").write_text(json.dumps({"bytes_total": round(plan["bytes_total"] * factor), "bytes_model": plan["bytes_model"],
                                                    "bytes_code": plan["bytes_code"] if code is None else code}))
    return tmp_path


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_plan_command(parser.add_subparsers())
    args = parser.parse_args(["plan", *argv])
    return args.func(args)


def test_check_exit_status_follows_the_tolerance(default_plan, tmp_path, capsys):
    common = ["--params", str(REPO / "params.yaml"), "--root", str(REPO), "--check", "--metrics"]
    assert _run([*common, str(_metrics(tmp_path, default_plan, 1.01))]) == 0
    assert "within 2%" in capsys.readouterr().out
    assert _run([*common, str(_metrics(tmp_path, default_plan, 1.05))]) == 1
    assert "OFF BY MORE THAN 2%" in capsys.readouterr().out
    assert _run([*common, str(_metrics(tmp_path, default_plan, 1.05)), "--tolerance", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check_ok"] and out["check"][0]["quantity"] == "bytes_total"


def test_check_uses_the_runs_code_when_the_sources_changed(default_plan, tmp_path):
    rows = check_plan(default_plan, _metrics(tmp_path, default_plan, 1.0, code=default_plan["bytes_code"] - 5000))
    assert rows[0]["quantity"] == "bytes_total, run's code" and rows[1]["quantity"] == "bytes_total"
    assert rows[1]["error_pct"] == pytest.approx(0.0, abs=1e-6)


def test_settings_outside_the_fit_are_named(tmp_path):
    params = (REPO / "params.yaml").read_text().replace("  compressor: best", "  compressor: zstd", 1)
    (tmp_path / "params.yaml").write_text(params)
    plan = make_plan(tmp_path / "params.yaml", "cpu", REPO, None)
    assert plan["uncalibrated"] == ["pack.compressor: zstd"] and "uncalibrated pack.compressor: zstd" in format_plan(plan)


def test_check_without_a_pack_and_unknown_device_fail_in_one_line(tmp_path):
    with pytest.raises(PgolfError, match="pack.json: no bytes_total"):
        _run(["--params", str(REPO / "params.yaml"), "--root", str(REPO), "--check", "--metrics", str(tmp_path)])
    with pytest.raises(PgolfError, match="unknown device kind"):
        make_plan(REPO / "params.yaml", "tpu", REPO, None)
