"""Issue 15 items 4/5, quantize side: the `ternary` quantizer stores exactly the model's
ternarization; Q^2 grids (midrise: 2 bits = {-3,-1,1,3} s/2) with per-group scales under RTN and
GPTQ; their params' validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.quantize import GroupQuant, QuantizeParams
from pgolf.model import build_model
from pgolf.model.layers import CastedLinear
from pgolf.model.ternary import BLOCK_MATRIX, ternarize, ternary_group, ternary_weight
from pgolf.quant.apply import quantize_state, quantize_tensor
from pgolf.quant.gptq import gptq
from pgolf.quant.grids import GRIDS
from pgolf.quant.rtn import levels_for, rtn, std_scale, qmax_for_bits

torch.set_num_threads(1)
TINY = dict(vocab_size=50, layers=2, width=32, heads=4, kv_heads=2)


def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.state_dict()


def test_block_matrix_names_are_the_six_factory_built_matrices_of_each_block():
    model = build_model(TINY)
    matched = {n for n in model.state_dict() if BLOCK_MATRIX.search(n)}
    assert len(matched) == 6 * TINY["layers"]
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n.removesuffix(".weight")], CastedLinear) for n in matched)
    assert not any(BLOCK_MATRIX.search(n) for n in ("tok_emb.weight", "blocks.0.attn.q_gain", "blocks.0.attn_scale"))


def test_ternary_group_comes_from_the_checkpoint_config():
    assert ternary_group({"block_linear": "ternary", "ternary_group": 64}, "blocks.1.mlp.fc.weight") == 64
    assert ternary_group({"block_linear": "dense"}, "blocks.1.mlp.fc.weight") is None
    assert ternary_group({"block_linear": "ternary"}, "tok_emb.weight") is None


def test_ternary_method_stores_exactly_the_models_ternarization():
    state = tiny_state()
    config = {**TINY, "block_linear": "ternary", "ternary_group": 16}
    params = QuantizeParams(method="ternary", min_numel=256, embedding=GroupQuant(bits=8))
    qm = quantize_state(state, {}, params, config)
    blocks = [n for n in qm.quantized if BLOCK_MATRIX.search(n)]
    assert len(blocks) == 6 * TINY["layers"]
    for name in blocks:
        qt = qm.quantized[name]
        trits, scales = ternarize(state[name], 16)
        assert (qt.bits, qt.scale_group, qt.grid) == (2, 16, "symmetric")
        torch.testing.assert_close(qt.q, trits, rtol=0, atol=0)
        torch.testing.assert_close(qt.scale, scales.half(), rtol=0, atol=0)
        # the rebuilt weight is the model's ternary weight up to the float16 rounding of its scales
        gap = (qt.dequantize().float() - ternary_weight(state[name], 16).float()).abs().max() / scales.max()
        assert float(gap) <= 2.0**-11
    emb = qm.quantized["tok_emb.weight"]
    assert emb.bits == 8 and emb.scale_group == 0  # the rest at its group's bits (record: 8)


def test_ternary_method_on_a_dense_checkpoint_ternarizes_nothing():
    state = tiny_state()
    qm = quantize_state(state, {}, QuantizeParams(method="ternary", min_numel=256), TINY)
    assert all(qt.scale_group == 0 and qt.bits >= 6 for qt in qm.quantized.values())


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(1, 9), st.integers(0, 2**16))
def test_midrise_rtn_picks_the_nearest_level(bits, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(5, cols, generator=gen)
    scale = torch.rand(5, cols, generator=gen) + 0.05
    levels = levels_for("midrise", bits)
    q = rtn(w, scale, 0, None, levels)
    assert int(q.min()) >= -(2 ** (bits - 1)) and int(q.max()) <= 2 ** (bits - 1) - 1
    grid = (torch.arange(levels.lo, levels.hi + 1).float() + 0.5)[None, None, :] * scale[..., None]
    best = (grid - w[..., None]).abs().min(dim=-1).values
    err = ((q.float() + 0.5) * scale - w).abs()
    assert bool((err <= best + 1e-5).all())


def test_two_bit_midrise_has_four_levels_and_no_zero():
    g = GRIDS["midrise"]
    assert (g.lo(2), g.hi(2), g.span(2)) == (-2, 1, 1.5)
    spec = GroupQuant(bits=2, k=1.5, grid="midrise", scale_group=8)
    torch.manual_seed(0)
    w = torch.randn(6, 20)
    qt, _ = quantize_tensor("blocks.0.mlp.fc.weight", "mlp", w, None, QuantizeParams(method="rtn"), "float32")
    qt2, _ = quantize_tensor("blocks.0.mlp.fc.weight", "mlp", w, None, QuantizeParams(method="rtn", mlp=spec), "float32")
    assert qt.scale.shape == (6,) and qt2.scale.shape == (6, 3)
    values = qt2.dequantize() / qt2.scale.float().repeat_interleave(8, dim=1)[:, :20]
    assert sorted(torch.unique(values).tolist()) == [-1.5, -0.5, 0.5, 1.5]
    assert qt2.check() is None


def test_gptq_with_identity_hessian_equals_rtn_on_the_grid_with_group_scales():
    torch.manual_seed(2)
    w = torch.randn(7, 24)
    scale = (torch.rand(7, 3) + 0.2).repeat_interleave(8, dim=1)
    for grid, bits in (("midrise", 2), ("midrise", 4), ("symmetric", 3)):
        levels = levels_for(grid, bits)
        q = gptq(w, torch.eye(24), scale, qmax_for_bits(bits), damp_frac=0.0, act_order=True, levels=levels)
        torch.testing.assert_close(q, rtn(w, scale, 0, None, levels), rtol=0, atol=0)


def test_gptq_on_a_grid_lowers_output_error_against_rtn():
    torch.manual_seed(3)
    x = torch.randn(256, 32) @ torch.randn(32, 32)
    h = x.T @ x
    w = torch.randn(16, 32)
    params = QuantizeParams(mlp=GroupQuant(bits=2, k=1.5, grid="midrise", scale_group=16))
    g, _ = quantize_tensor("blocks.0.mlp.fc.weight", "mlp", w, h, params, "float32")
    r, _ = quantize_tensor("blocks.0.mlp.fc.weight", "mlp", w, h, params.model_copy(update={"method": "rtn"}), "float32")
    err = lambda qt: float(torch.einsum("ij,jk,ik->", w - qt.dequantize(), h, w - qt.dequantize()))
    assert err(g) < 0.9 * err(r)


def test_default_group_path_is_unchanged():
    torch.manual_seed(4)
    w = torch.randn(8, 40)
    qt, method = quantize_tensor("blocks.0.mlp.fc.weight", "mlp", w, None, QuantizeParams(), "float32")
    scale = std_scale(w, 12.0, qmax_for_bits(6))
    torch.testing.assert_close(qt.q, rtn(w, scale, qmax_for_bits(6)), rtol=0, atol=0)
    assert (method, qt.scale_group, qt.grid) == ("rtn", 0, "symmetric")


@pytest.mark.parametrize("kwargs, match", [
    ({"mlp": {"grid": "lattice"}}, "grid"),
    ({"mlp": {"salient": 64, "grid": "midrise"}}, "salient blocks need one scale per row"),
    ({"lowrank_rank": 4, "attention": {"scale_group": 64}}, "lowrank needs one scale per row"),
    ({"method": "binary"}, "method"),
])
def test_low_bit_params_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantizeParams.model_validate(kwargs)
