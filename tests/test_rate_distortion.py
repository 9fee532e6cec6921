"""Quantization on the rate-distortion frontier (issue 19): the proxy, the exact symbol bytes,
the Pareto frontier, the fit to a byte budget (never over, monotone), the calibration of the
proxy and the quantize stage's target_bytes branch, on synthetic data and a tiny model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from pgolf.config.calibrate import CalibrateParams
from pgolf.config.pack import PackParams
from pgolf.config.quantize import FitWeights, QuantizeParams
from pgolf.data.shards import write_shard
from pgolf.errors import ParamsError
from pgolf.io import read_json, write_json_atomic
from pgolf.model.checkpoint import META_FILE, MODEL_FILE
from pgolf.pack.code_bytes import measure_code_bytes
from pgolf.pack.pack import pack_model
from pgolf.quant import ratedistortion as rd
from pgolf.quant.apply import quantize_state
from pgolf.quant.calibrate import calibrate_hessians, save_hessians
from pgolf.quant.gptq import relative_output_error
from pgolf.quant.stage import fit_to_budget, quantize_stage
from pgolf.quant.store import load_quantized

import test_calibrate

torch.set_num_threads(1)
TINY = test_calibrate.TINY
CAL = CalibrateParams(batches=4, batch_seqs=2, seq_len=16, seed=1)
# a small search: 4 widths x 6 k per group, every k coded exactly (ANCHOR_EVERY does not bite)
PARAMS = QuantizeParams(min_numel=256, fit_bits=[3, 4, 5, 6], fit_k_min=4.0, fit_k_max=16.0, fit_k_steps=6,
                        attention={"bits": 5, "k": 12.0}, mlp={"bits": 5, "k": 12.0}, embedding={"bits": 6, "k": 12.0})
PACK = PackParams(reference_brotli=False)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    return test_calibrate.tiny_model(seed)  # the same perturbed tiny GPT the calibration tests use


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny model, its Hessians (the head's included) and its frontier under PARAMS."""
    shard = write_shard(tmp_path_factory.mktemp("shards") / "fineweb_train_000000.bin", np.random.default_rng(0).integers(0, 64, 4000))
    model = tiny_model()
    hs = calibrate_hessians(model, [shard], CAL.model_copy(update={"head_hessian": True}))
    hessians = {name: hs.hessians[group] for name, group in hs.layers.items()}
    state = model.state_dict()
    packer = rd.Packer(state, hessians, dict(TINY), PACK, code_bytes=1000)
    mats = rd.matrices(state, hessians, PARAMS)
    points = rd.all_points(mats, PARAMS, PACK)
    front = rd.frontier(points, PARAMS.fit_weights)
    return {"model": model, "hs": hs, "shard": shard, "hessians": hessians, "packer": packer, "mats": mats, "points": points,
            "front": front, "offset": rd.estimate_offset(packer, mats, PARAMS)}


# ---- the proxy ----

def test_distortion_is_the_relative_output_error_and_the_lookup_role(tiny):
    qm = quantize_state(tiny["model"].state_dict(), tiny["hessians"], PARAMS, {})
    d = rd.distortion(qm.quantized, tiny["mats"])
    w = tiny["mats"]["tok_emb.weight"].w
    w_hat = qm.quantized["tok_emb.weight"].dequantize().float()
    assert d["embedding"] == pytest.approx(relative_output_error(w, w_hat, tiny["hessians"]["tok_emb.weight"]))
    assert d["embedding_lookup"] == pytest.approx(float(((w - w_hat) ** 2).sum() / (w**2).sum()))
    attn = [n for n in qm.quantized if ".attn." in n]
    assert d["attention"] == pytest.approx(sum(relative_output_error(tiny["mats"][n].w, qm.quantized[n].dequantize().float(), tiny["hessians"][n]) for n in attn))
    assert rd.proxy(d, FitWeights(attention=2.0, mlp=0.0, embedding=0.0, embedding_lookup=0.0)) == pytest.approx(2.0 * d["attention"])


def test_a_matrix_without_a_hessian_scores_its_relative_weight_error():
    w = torch.randn(8, 16)
    w_hat = w + 0.1 * torch.randn(8, 16)
    expected = float(((w - w_hat) ** 2).sum() / (w**2).sum())
    assert rd.tensor_distortion("mlp", w, w_hat, None) == {"mlp": pytest.approx(expected)}
    assert rd.tensor_distortion("mlp", w, w_hat, torch.eye(16)) == {"mlp": pytest.approx(expected)}  # H = I: the same


def test_symbol_bytes_add_up_to_the_packers_symbol_streams(tiny):
    qm = quantize_state(tiny["model"].state_dict(), tiny["hessians"], PARAMS, {})
    by_group = rd.by_group(tiny["mats"])
    ours = sum(rd.symbol_bytes({n: qm.quantized[n] for n in names}, PACK) for names in by_group.values())
    assert ours == pack_model(qm, PACK).bytes_symbols


def test_group_points_code_the_anchors_exactly_and_interpolate_between(tiny):
    params = PARAMS.model_copy(update={"fit_k_steps": 13, "fit_bits": [4]})
    mats = rd.by_group(tiny["mats"])["mlp"]
    points = {p.k: p for p in rd.group_points("mlp", mats, params, PACK) if p.bits == 4}
    grid = rd.geometric(4.0, 16.0, 13)
    for k in grid:
        qts = quantize_state(tiny["model"].state_dict(), tiny["hessians"], rd.with_settings(params, {"mlp": (4, k)}), {}).quantized
        exact = rd.symbol_bytes({n: qts[n] for n in mats}, PACK)
        if k in grid[:: rd.ANCHOR_EVERY] + grid[-1:]:
            assert points[k].bytes == exact
        else:
            assert abs(points[k].bytes - exact) <= 0.03 * exact


def test_group_points_survive_a_grid_that_rounds_everything_to_zero():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    mats = {"blocks.0.mlp.fc.weight": rd.Matrix("mlp", w, None, "float32")}
    params = PARAMS.model_copy(update={"fit_bits": [2], "fit_k_min": 16.0, "fit_k_max": 64.0, "fit_k_steps": 9})
    points = [p for p in rd.group_points("mlp", mats, params, PACK) if p.bits == 2]
    assert all(p.bytes > 0 and np.isfinite(p.bytes) for p in points)
    assert points[-1].distortion["mlp"] == pytest.approx(1.0)  # every symbol 0: W_hat = 0


# ---- the frontier ----

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.floats(0, 10)), min_size=1, max_size=40))
def test_pareto_keeps_the_points_nothing_beats(raw):
    points = [(b, c, (i,)) for i, (b, c) in enumerate(raw)]
    front = rd.pareto(points)
    assert all(a[0] < b[0] and a[1] > b[1] for a, b in zip(front, front[1:]))
    for b, c, _ in points:
        assert any(fb <= b and fc <= c for fb, fc, _ in front)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(1, 300), st.floats(0, 5)), min_size=1, max_size=5), min_size=1, max_size=3))
def test_the_frontier_is_the_pareto_sum_over_groups(groups):
    names = ["attention", "mlp", "embedding"]
    points = {names[g]: [rd.GroupPoint(names[g], 4, float(i), b, {names[g]: c}) for i, (b, c) in enumerate(pts)] for g, pts in enumerate(groups)}
    front = rd.frontier(points, FitWeights())
    assert all(a.bytes < b.bytes and a.cost > b.cost for a, b in zip(front, front[1:]))
    for combo in np.ndindex(*[len(p) for p in points.values()]):
        chosen = [pts[i] for pts, i in zip(points.values(), combo)]
        b, c = sum(p.bytes for p in chosen), sum(next(iter(p.distortion.values())) for p in chosen)
        assert any(s.bytes <= b and s.cost <= c + 1e-9 for s in front)
    for s in front:
        assert s.bytes == sum(p.bytes for p in s.choice) and s.cost == pytest.approx(sum(next(iter(p.distortion.values())) for p in s.choice))


def test_the_tiny_models_frontier_gets_better_with_bytes(tiny):
    front = tiny["front"]
    assert len(front) > 20
    assert all(a.bytes < b.bytes and a.cost > b.cost for a, b in zip(front, front[1:]))
    assert {p.group for p in front[0].choice} == {"attention", "mlp", "embedding"}


# ---- the fit ----

def synthetic_measure(est: list[int], jitter: list[int]):
    return lambda i: est[i] + 500 + jitter[i]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=60), st.data())
def test_fit_index_never_exceeds_and_never_goes_back(steps, data):
    est = list(np.cumsum(steps))
    jitter = data.draw(st.lists(st.integers(-60, 60), min_size=len(est), max_size=len(est)))
    offset = data.draw(st.integers(300, 700))
    measure = synthetic_measure(est, jitter)
    targets = sorted(data.draw(st.lists(st.integers(0, est[-1] + 1000), min_size=2, max_size=6)))
    found = []
    for target in targets:
        try:
            i, size = rd.fit_index(est, target, measure, offset)
        except ValueError as exc:  # only when the first point does not fit, and before any target fitted
            assert "below the smallest setting" in str(exc) and measure(0) > target and not found
            continue
        assert size == measure(i) <= target  # the first point may not fit while a later one does (bytes need not increase)
        assert i + 1 == len(est) or measure(i + 1) > target
        found.append(i)
    assert found == sorted(found)


def test_fit_index_is_exact_when_the_bytes_increase():
    est = [100, 200, 300, 400, 500]
    for target in range(655, 1100, 7):
        i, size = rd.fit_index(est, target, lambda j: est[j] + 555, 500)
        assert est[i] + 555 <= target and (i == 4 or est[i + 1] + 555 > target)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=5))
def test_on_a_tiny_model_the_fit_never_exceeds_and_more_bytes_never_cost_proxy(tiny, fractions):
    front, packer = tiny["front"], tiny["packer"]
    lo, hi = packer(front[0].params(PARAMS))[1], packer(front[-1].params(PARAMS))[1]
    chosen = []
    for target in sorted(int(lo + f * (hi - lo)) for f in fractions):
        i, size = rd.fit_index([s.bytes for s in front], target, lambda j: packer(front[j].params(PARAMS))[1], tiny["offset"])
        qm, measured = packer(front[i].params(PARAMS))
        assert size == measured <= target
        assert len(pack_model(qm, PACK, rd.STAND_IN_META).data) + packer.code_bytes == measured
        chosen.append(front[i].cost)
    assert chosen == sorted(chosen, reverse=True)


def test_fit_to_budget_lands_under_the_target_with_its_settings(tiny):
    packer = rd.Packer(tiny["packer"].state, tiny["hessians"], dict(TINY), PACK, code_bytes=1000)
    base = packer(PARAMS)[1]
    fit = fit_to_budget(packer, PARAMS, base)
    assert fit.bytes_total <= base
    assert fit.proxy <= rd.proxy(rd.distortion(packer(PARAMS)[0].quantized, tiny["mats"]), PARAMS.fit_weights) + 1e-12
    again = quantize_state(tiny["model"].state_dict(), tiny["hessians"], fit.params, dict(TINY))
    assert all(torch.equal(again.quantized[n].q, fit.model.quantized[n].q) for n in again.quantized)
    with pytest.raises(ParamsError, match="below the smallest setting"):
        fit_to_budget(packer, PARAMS, 1000)


# ---- calibration and the curve ----

def test_calibrated_weights_recover_a_linear_gap():
    rng = np.random.default_rng(0)
    true = {"attention": 0.02, "mlp": 0.08, "embedding": 6.5, "embedding_lookup": 0.5}
    rows = []
    for _ in range(12):
        comps = {c: float(rng.uniform(0, 0.1)) for c in true}
        rows.append((comps, sum(true[c] * comps[c] for c in true)))
    weights, rms = rd.calibrated_weights(rows)
    assert rms < 1e-9
    assert weights.model_dump() == pytest.approx(true | {"other": 0.0})


def test_calibrated_weights_are_never_negative():
    rows = [({"attention": 1.0, "mlp": 0.0}, 1.0), ({"attention": 0.0, "mlp": 1.0}, -1.0), ({"attention": 1.0, "mlp": 1.0}, 0.5)]
    weights, _ = rd.calibrated_weights(rows)
    assert weights.mlp == 0.0 and weights.attention > 0


def test_sweep_calibrates_the_proxy_and_draws_each_method(tiny):
    true = FitWeights(attention=0.5, mlp=1.5, embedding=4.0, embedding_lookup=1.0)
    gap = lambda qm: rd.proxy(rd.distortion(qm.quantized, tiny["mats"]), true)  # noqa: E731 - a gap the proxy can fit exactly
    result = rd.sweep(tiny["packer"], PARAMS, gap, ["gptq", "gptq, head Hessian", "rtn"], points=4, evaluate=2)
    assert result["calibration_rms_bpb"] < 1e-6
    assert {r["method"] for r in result["rows"]} == {"gptq", "gptq, head Hessian", "rtn"}
    for row in result["rows"]:
        assert row["gap_predicted"] == pytest.approx(rd.proxy(row["distortion"], true), rel=1e-6)
        assert row["gap"] is None or row["gap"] == pytest.approx(row["gap_predicted"], rel=1e-6)
    assert sum(r["gap"] is not None for r in result["rows"]) == 6


def test_the_rd_command_is_registered():
    from pgolf import rd as rd_cli
    from pgolf.cli import COMMANDS

    parser = argparse.ArgumentParser()
    rd_cli.add_rd_command(parser.add_subparsers())
    args = parser.parse_args(["rd", "--out", "curve.json", "--method", "rtn", "--points", "3"])
    assert COMMANDS["rd"] == ("pgolf.rd", "add_rd_command")
    assert args.func is rd_cli._rd and args.method == ["rtn"] and args.points == 3 and args.threads == 1


# ---- params and the quantize stage ----

def test_target_bytes_is_off_by_default_and_the_grid_is_checked():
    params = QuantizeParams()
    assert params.target_bytes is None and params.threads == 0
    with pytest.raises(ValueError, match="distinct bit widths"):
        QuantizeParams(fit_bits=[4, 9])
    with pytest.raises(ValueError, match="fit_k_min 20.0 exceeds fit_k_max 10.0"):
        QuantizeParams(fit_k_min=20.0, fit_k_max=10.0)


@pytest.fixture(scope="module")
def stage_inputs(tiny, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stage")
    (root / "checkpoint").mkdir()
    save_file({k: v.contiguous() for k, v in tiny["model"].state_dict().items()}, str(root / "checkpoint" / MODEL_FILE))
    write_json_atomic(root / "checkpoint" / META_FILE, {"model_config": TINY})
    (root / "calibrate").mkdir()
    save_hessians(tiny["hs"], root / "calibrate", [tiny["shard"].name])
    return root / "checkpoint", root / "calibrate"


def test_the_stage_without_a_target_quantizes_as_before(stage_inputs, tmp_path):
    checkpoint, calibrate = stage_inputs
    quantize_stage(PARAMS, checkpoint, calibrate, tmp_path / "q", tmp_path / "m.json")
    metrics = read_json(tmp_path / "m.json")
    assert list(metrics) == ["method", "tensors_quantized", "tensors_passthrough", "groups", "tensors", "provenance"]
    stored = load_quantized(tmp_path / "q")
    assert {n: qt.bits for n, qt in stored.quantized.items() if ".mlp." in n} == {n: 5 for n in stored.quantized if ".mlp." in n}


def test_the_stage_fits_the_target_and_records_it(stage_inputs, tmp_path, caplog):
    checkpoint, calibrate = stage_inputs
    with pytest.raises(ParamsError, match="needs the pack params"):
        quantize_stage(PARAMS.model_copy(update={"target_bytes": 50_000}), checkpoint, calibrate, tmp_path / "q", tmp_path / "m.json")
    repo = Path(__file__).resolve().parents[1]
    pack = PACK.model_copy(update={"code_modules": ["pgolf.errors"]})  # a small code closure keeps the test quick
    code_bytes = measure_code_bytes(pack.code_modules, repo).bytes_code
    target = code_bytes + 5000
    quantize_stage(PARAMS.model_copy(update={"target_bytes": target}), checkpoint, calibrate, tmp_path / "q", tmp_path / "m.json", pack, repo)
    fit = read_json(tmp_path / "m.json")["fit"]
    assert "fit_weights are uncalibrated" in caplog.text
    assert fit["target_bytes"] == target and fit["bytes_code"] == code_bytes
    assert fit["bytes_total_predicted"] <= target - rd.HASH_SLACK
    stored = load_quantized(tmp_path / "q")
    assert {g: {"bits": s["bits"]} for g, s in fit["settings"].items()} == {g: {"bits": qt.bits} for qt in stored.quantized.values() for g in [qt.group]}
    assert len(pack_model(stored, pack, rd.STAND_IN_META).data) + code_bytes == fit["bytes_total_predicted"]


# ---- the stage `rd`: its params, the curve with given weights, the summary ----

def test_rd_params_check_methods_bits_and_span():
    from pgolf.config.rd import RDParams

    assert RDParams().methods == ["gptq", "rtn"] and RDParams(methods=[]).methods == []
    assert RDParams(fit_bits=[8, 4, 4]).fit_bits == [4, 8]
    with pytest.raises(ValueError, match="must be one of"):
        RDParams(methods=["gptq", "awq"])
    with pytest.raises(ValueError, match="at most once"):
        RDParams(methods=["rtn", "rtn"])
    with pytest.raises(ValueError, match="within 2..8"):
        RDParams(fit_bits=[1])
    with pytest.raises(ValueError, match="span_lo"):
        RDParams(span_lo=1.5, span_hi=1.2)
    with pytest.raises(ValueError, match="extra"):
        RDParams(point=3)


def test_sweep_with_given_weights_runs_no_calibration_and_predicts_with_them(tiny):
    given = FitWeights(attention=0.5, mlp=1.5, embedding=4.0, embedding_lookup=1.0)
    calls = []

    def gap(qm):
        calls.append(qm)
        return 0.0

    result = rd.sweep(tiny["packer"], PARAMS, gap, ["gptq", "rtn"], points=3, evaluate=1, weights=given)
    assert result["calibration_rms_bpb"] is None and result["calibration"] == [] and result["weights"] == given.model_dump()
    assert len(calls) == sum(1 for m in ("gptq", "rtn") if any(r["method"] == m for r in result["rows"]))  # one real score per line
    for row in result["rows"]:
        assert row["gap_predicted"] == pytest.approx(rd.proxy(row["distortion"], given), rel=1e-9)


def test_curve_rows_and_summary_put_the_checkpoint_under_every_point():
    from pgolf import rd as rd_cli

    result = {"rows": [{"method": "gptq", "bytes_total": 300, "bytes_model": 200, "gap_predicted": 0.02, "gap": 0.03, "settings": "a"},
                       {"method": "gptq", "bytes_total": 500, "bytes_model": 400, "gap_predicted": 0.01, "gap": None, "settings": "b"},
                       {"method": "rtn", "bytes_total": 450, "bytes_model": 350, "gap_predicted": 0.05, "gap": None, "settings": "c"}],
              "base_bytes_total": 400, "weights": FitWeights().model_dump(), "calibration_rms_bpb": None}
    rows = rd_cli.curve_rows(result, 1.5)
    assert [(r["val_bpb_predicted"], r["val_bpb"]) for r in rows] == [(pytest.approx(1.52), pytest.approx(1.53)), (pytest.approx(1.51), None), (pytest.approx(1.55), None)]
    summary = rd_cli.curve_summary(result, rows, 1.5, 0)
    assert summary["lines"] == {"gptq": {"points": 2, "measured": 1, "bytes_total_min": 300, "bytes_total_max": 500},
                                "rtn": {"points": 1, "measured": 0, "bytes_total_min": 450, "bytes_total_max": 450}}
    assert summary["checkpoint_val_bpb"] == 1.5 and summary["eval_tokens"] is None


def test_the_rd_stage_with_no_methods_writes_an_empty_curve_and_loads_nothing(tmp_path):
    from pgolf import rd as rd_cli
    from pgolf.config.rd import RDParams

    summary = rd_cli.rd_stage(RDParams(methods=[]), tmp_path / "absent", tmp_path / "absent", tmp_path / "absent", tmp_path / "absent",
                              tmp_path / "plots" / "rd.json", tmp_path / "rd.json")
    assert summary == {"lines": {}}
    assert json.loads((tmp_path / "plots" / "rd.json").read_text()) == []
