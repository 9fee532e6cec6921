"""LQER: a rank-r correction of the quantization residual on the top-N matrices, with integer
factors (group scales) and an optional output-weighted fit; stored as the `lowrank` extra,
counted in the artifact and applied at load."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.errors import ArtifactError
from pgolf.model import build_model
from pgolf.pack.artifact import parse_artifact
from pgolf.pack.load import artifact_from_parsed, model_from_artifact
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import quantize_state
from pgolf.quant.gptq import relative_output_error
from pgolf.quant.hessian import HessianAccumulator, collect_hessians
from pgolf.quant.lowrank import dequantize_factor, group_index
from pgolf.quant.lowrank_fit import fit_lowrank, quantize_factor, top_by_residual, truncated_factors
from pgolf.quant.scheme import QuantizedTensor

torch.set_num_threads(1)
TINY = {"vocab_size": 64, "layers": 2, "width": 32, "heads": 2, "kv_heads": 1}
LQER = {"lowrank_rank": 4, "lowrank_top": 3, "lowrank_u_bits": 4, "lowrank_v_bits": 4, "lowrank_group": 8}


def correlated_hessian(cols: int, seed: int, samples: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) * torch.linspace(0.1, 3.0, cols)
    acc = HessianAccumulator(cols)
    acc.add_batch(torch.randn(samples, cols, generator=g) @ mix)
    return acc.h.float()


def proxy(e: torch.Tensor, h: torch.Tensor) -> float:
    """tr(E H E^T)."""
    return float(torch.einsum("ij,jk,ik->", e.double(), h.double(), e.double()))


def test_top_by_residual_picks_the_largest_norms():
    norms = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 5.0}
    assert top_by_residual(norms, 2) == {"b", "d"}
    assert top_by_residual(norms, 3) == {"b", "c", "d"}
    assert top_by_residual(norms, 0) == set(norms)


def test_group_index_splits_into_near_equal_runs():
    assert group_index(8, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert group_index(5, 2).tolist() == [0, 0, 0, 1, 1]
    assert group_index(3, 3).tolist() == [0, 1, 2]


@settings(max_examples=50, deadline=None)
@given(r=st.integers(1, 4), n=st.integers(1, 40), bits=st.integers(2, 8), group=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_factor_symbols_stay_in_range_within_half_a_step(r, n, bits, group, seed):
    x = torch.randn(r, n, generator=torch.Generator().manual_seed(seed)).double()
    symbols, scale = quantize_factor(x, bits, group)
    maxq = 2 ** (bits - 1) - 1
    assert scale.dtype == torch.float16 and scale.shape == (r, -(-n // group))
    assert float(symbols.abs().max()) <= maxq and torch.equal(symbols, symbols.round())
    step = scale.float()[:, group_index(n, scale.shape[1])]
    assert bool(((dequantize_factor(symbols, scale) - x.float()).abs() <= step / 2 + 1e-3 * step + 1e-7).all())


def test_weighted_fit_wins_on_its_metric_and_the_plain_svd_on_its_own():
    g = torch.Generator().manual_seed(0)
    e, h = torch.randn(24, 16, generator=g), correlated_hessian(16, 0)
    a_w, b_w = truncated_factors(e, 3)
    a_h, b_h = truncated_factors(e, 3, h, damp_frac=0.0)
    plain, weighted = e.double() - a_w @ b_w, e.double() - a_h @ b_h
    assert proxy(weighted, h) < 0.95 * proxy(plain, h)
    assert float(plain.pow(2).sum()) < float(weighted.pow(2).sum())


def test_refitting_v_to_the_rounded_u_beats_rounding_both():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(32, 24, generator=g)
    parts = fit_lowrank(e, 4, u_bits=2, v_bits=0, group=8)
    refit = parts["lowrank.u"].float().T
    u = dequantize_factor(refit, parts["lowrank.u_scale"]).T
    a, b = truncated_factors(e, 4)
    assert float((e - u @ parts["lowrank.v"].float()).pow(2).sum()) < float((e - u @ b.float()).pow(2).sum())


@pytest.mark.parametrize("metric", ["weight", "output"])
def test_lqer_reduces_the_output_error_of_the_top_matrices(metric):
    g = torch.Generator().manual_seed(2)
    names = [f"blocks.{i}.mlp.fc.weight" for i in range(5)]
    state = {name: torch.randn(24, 32, generator=g) * (1 + i) for i, name in enumerate(names)}
    hessians = {name: correlated_hessian(32, i) for i, name in enumerate(names)}
    base = QuantizeParams(min_numel=1, mlp={"bits": 4, "k": 12.0})
    plain = quantize_state(state, hessians, base, {})
    fixed = quantize_state(state, hessians, base.model_copy(update=LQER | {"lowrank_metric": metric}), {})
    residual = {n: float((state[n] - plain.quantized[n].dequantize()).norm()) for n in names}
    chosen = {n for n, qt in fixed.quantized.items() if "lowrank.u" in qt.extras}
    assert chosen == set(sorted(names, key=residual.get)[-3:])
    for name in names:
        before = relative_output_error(state[name], plain.quantized[name].dequantize(), hessians[name])
        after = relative_output_error(state[name], fixed.quantized[name].dequantize(), hessians[name])
        assert after < 0.97 * before if name in chosen else after == before
    rows = {row["name"]: row for row in fixed.report}
    assert all(rows[n]["rel_output_err_with_extras"] < rows[n]["rel_output_err"] for n in chosen)


@pytest.mark.parametrize("extras, match", [
    ({"lowrank.u": torch.full((16, 2), 0.5), "lowrank.v": torch.zeros(2, 8), "lowrank.u_scale": torch.ones(2, 1)}, "integers"),
    ({"lowrank.u": torch.zeros(16, 2), "lowrank.v": torch.zeros(2, 8), "lowrank.v_scale": torch.ones(3, 1)}, "v_scale shape"),
    ({"lowrank.u": torch.zeros(16, 2), "lowrank.v": torch.zeros(2, 8), "lowrank.u_scale": torch.ones(2, 17)}, "u_scale shape"),
    ({"lowrank.u": torch.zeros(16, 2), "lowrank.v": torch.zeros(3, 8)}, "do not factor"),
    ({"lowrank.u": torch.zeros(16, 2), "lowrank.v": torch.zeros(2, 8), "lowrank.w_scale": torch.ones(2, 1)}, "optional"),
])
def test_malformed_integer_factors_are_artifact_errors(extras, match):
    qt = QuantizedTensor("w", "mlp", 4, torch.zeros(16, 8, dtype=torch.int8), torch.ones(16).half(), "float32", extras)
    with pytest.raises(ArtifactError, match=match):
        qt.check()


def test_loaded_artifact_applies_the_correction():
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hs = collect_hessians(model, [torch.randint(0, 64, (2, 16)) for _ in range(3)])
    hessians = {name: hs.hessians[group] for name, group in hs.layers.items()}
    config = model.config.model_dump(mode="json")
    params = QuantizeParams(min_numel=256, lowrank_metric="output", **LQER)
    qm = quantize_state(model.state_dict(), hessians, params, config)
    corrected = [name for name, qt in qm.quantized.items() if "lowrank.u_scale" in qt.extras]
    assert len(corrected) == 3
    packed = pack_model(qm, PackParams())
    plain_qm = quantize_state(model.state_dict(), hessians, params.model_copy(update={"lowrank_rank": 0}), config)
    assert packed.bytes_model > pack_model(plain_qm, PackParams()).bytes_model
    loaded = model_from_artifact(artifact_from_parsed(parse_artifact(packed.data)), "test")
    with_correction, without = build_model(config), build_model(config)
    with_correction.load_state_dict(qm.state_dict())
    without.load_state_dict(plain_qm.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        logits = loaded(idx)
        assert torch.equal(logits, with_correction.eval()(idx))
        assert not torch.equal(logits, without.eval()(idx))
