"""Ternary weights (BitNet b1.58, record #640): the absmean ternarization, its stored form's reload, and the
quantization-aware TernaryLinear (exact forward, straight-through gradient, dense init, GPTQ hooks, TTT)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from eval_helpers import VOCAB, random_stream
from train_helpers import assert_compiled_matches_eager
from hypothesis.extra.numpy import arrays

from pgolf.config.model import ModelParams
from pgolf.model import GPT
from pgolf.model.ternary import EPS, expand_scales, ternarize, ternary_latent, ternary_weight
from pgolf.model.ternary_linear import TernaryLinear, straight_through
from pgolf.quant.hessian import collect_hessians, linear_layers

torch.set_num_threads(1)
TINY = dict(vocab_size=VOCAB, layers=2, width=32, heads=4, kv_heads=2)


def weights(max_rows: int = 5, max_cols: int = 40):
    shape = st.tuples(st.integers(1, max_rows), st.integers(1, max_cols))
    return arrays(np.float32, shape, elements=st.floats(-4.0, 4.0, width=32)).map(torch.from_numpy)


def reference_scales(w: torch.Tensor, group: int) -> torch.Tensor:
    """mean |w| of each run of `group` columns, the last run possibly shorter, one group at a time."""
    cols = [w[:, start:start + group].abs().mean(dim=1) for start in range(0, w.size(1), group)]
    return torch.stack(cols, dim=1).clamp_min(EPS)


@settings(max_examples=200, deadline=None)
@given(w=weights(), group=st.integers(1, 16))
def test_ternarize_gives_trits_and_the_absmean_of_each_group_partial_last_included(w: torch.Tensor, group: int) -> None:
    trits, scales = ternarize(w, group)
    assert trits.dtype == torch.int8 and trits.shape == w.shape
    assert set(trits.unique().tolist()) <= {-1, 0, 1}
    assert scales.shape == (w.size(0), -(-w.size(1) // group))
    assert torch.allclose(scales, reference_scales(w, group), rtol=1e-5, atol=0)
    s = expand_scales(scales, group, w.size(1))
    ratio = w / s
    # round-to-nearest of w/s, clamped: clear cases only (ties at |w/s| = 0.5 may go either way)
    assert torch.all(trits[ratio.abs() < 0.499] == 0)
    big = ratio.abs() > 0.501
    assert torch.equal(trits[big], torch.sign(ratio[big]).to(torch.int8))


@settings(max_examples=100, deadline=None)
@given(w=weights(), group=st.integers(1, 16))
def test_ternary_weight_is_trits_times_scales_in_the_weights_dtype(w: torch.Tensor, group: int) -> None:
    trits, scales = ternarize(w, group)
    expected = trits.float() * expand_scales(scales, group, w.size(1))
    assert torch.equal(ternary_weight(w, group), expected)
    assert ternary_weight(w.bfloat16(), group).dtype == torch.bfloat16


@settings(max_examples=200, deadline=None)
@given(w=weights(), group=st.integers(1, 16))
def test_a_stored_ternary_tensor_reloads_into_the_same_ternary_weight(w: torch.Tensor, group: int) -> None:
    trits, scales = ternarize(w, group)
    latent = ternary_latent(trits, scales, group)
    again, _ = ternarize(latent, group)
    assert torch.equal(again, trits)
    assert torch.allclose(ternary_weight(latent, group), ternary_weight(w, group), rtol=1e-6, atol=0)


def test_reloading_trits_times_scales_directly_would_shrink_the_scales() -> None:
    """Why ternary_latent exists: a group with zeros re-ternarizes to a smaller scale."""
    w = torch.tensor([[1.0, -1.0, 0.1, 0.0]])
    trits, scales = ternarize(w, 4)
    naive = trits.float() * expand_scales(scales, 4, 4)
    assert not torch.allclose(ternary_weight(naive, 4), ternary_weight(w, 4))
    assert torch.allclose(ternary_weight(ternary_latent(trits, scales, 4), 4), ternary_weight(w, 4))


def test_ternarize_refuses_bad_shapes_and_groups() -> None:
    with pytest.raises(ValueError, match="2-D"):
        ternarize(torch.ones(3), 2)
    with pytest.raises(ValueError, match="group must be >= 1"):
        ternarize(torch.ones(2, 2), 0)


def test_straight_through_is_exact_forward_and_identity_backward() -> None:
    latent = torch.tensor([0.3, -0.7, 0.05], requires_grad=True)
    quantized = torch.tensor([0.25, -0.5, 0.0])
    out = straight_through(latent, quantized)
    assert torch.equal(out, quantized)
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(latent.grad, torch.tensor([1.0, 2.0, 3.0]))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), in_features=st.integers(1, 24), out_features=st.integers(1, 12), group=st.integers(1, 9))
def test_ternary_linear_forward_is_the_ternary_weight_and_its_gradient_the_dense_one(seed: int, in_features: int, out_features: int, group: int) -> None:
    torch.manual_seed(seed)
    layer = TernaryLinear(in_features, out_features, group)
    x, g = torch.randn(3, 5, in_features), torch.randn(3, 5, out_features)
    y = layer(x)
    tw = ternary_weight(layer.weight.detach(), group).requires_grad_(True)
    y_ref = F.linear(x, tw)
    assert torch.equal(y, y_ref)  # what the packed model computes, bit for bit
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    assert torch.equal(layer.weight.grad, tw.grad)


def test_ternary_linear_under_bf16_autocast_computes_in_bf16_with_the_ternary_weight() -> None:
    torch.manual_seed(0)
    layer = TernaryLinear(32, 16, 8)
    x = torch.randn(2, 4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = F.linear(x.bfloat16(), ternary_weight(layer.weight.detach(), 8).bfloat16())
    assert torch.equal(y, expected)


def test_ternary_model_is_initialized_exactly_as_the_dense_one() -> None:
    torch.manual_seed(0)
    dense = GPT(ModelParams(**TINY)).state_dict()
    torch.manual_seed(0)
    model = GPT(ModelParams(**TINY, block_linear="ternary", ternary_group=8))
    assert dense.keys() == model.state_dict().keys()
    assert all(torch.equal(dense[k], v) for k, v in model.state_dict().items())
    assert all(isinstance(getattr(b.attn, n), TernaryLinear) for b in model.blocks for n in ("c_q", "c_k", "c_v", "proj"))
    assert all(isinstance(b.mlp.fc, TernaryLinear) and b.mlp.proj.group == 8 for b in model.blocks)


def test_zero_initialized_ternary_projections_output_zero_and_still_learn() -> None:
    torch.manual_seed(0)
    model = GPT(ModelParams(**TINY, block_linear="ternary", ternary_group=8))
    x = torch.randn(2, 5, 32)
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.proj(x)) == 0
        assert torch.count_nonzero(block.mlp.proj(torch.randn(2, 5, 64))) == 0
    idx = torch.randint(0, VOCAB, (2, 12))
    model.loss(idx, idx).backward()
    assert all(torch.count_nonzero(b.attn.proj.weight.grad) > 0 and torch.count_nonzero(b.mlp.proj.weight.grad) > 0 for b in model.blocks)


def test_ternary_model_compiles_without_graph_breaks_and_matches_eager() -> None:
    torch.manual_seed(0)
    model = GPT(ModelParams(**TINY, block_linear="ternary", ternary_group=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert_compiled_matches_eager(model, torch.randint(0, VOCAB, (2, 12)))


def test_gptq_calibration_hooks_every_ternary_matrix() -> None:
    torch.manual_seed(0)
    model = GPT(ModelParams(**TINY, block_linear="ternary", ternary_group=8))
    names = {f"{n}.weight" for n in linear_layers(model)}
    matrices = {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2 and "resid_mix" not in n}
    assert matrices and matrices <= names
    hs = collect_hessians(model, [torch.randint(0, VOCAB, (2, 12))])
    assert all(hs.for_weight(n) is not None for n in matrices)


def test_a_reloaded_ternary_state_computes_the_trained_forward() -> None:
    """The packed-model path: store (trits, scales) per matrix, rebuild, load their latent form."""
    torch.manual_seed(0)
    config = ModelParams(**TINY, block_linear="ternary", ternary_group=8)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {}
    for name, tensor in model.state_dict().items():
        is_ternary = name.startswith("blocks.") and tensor.ndim == 2 and "resid_mix" not in name
        state[name] = ternary_latent(*ternarize(tensor, 8), 8) if is_ternary else tensor
    torch.manual_seed(1)
    loaded = GPT(config)
    loaded.load_state_dict(state)
    idx = torch.randint(0, VOCAB, (2, 12))
    assert torch.allclose(loaded(idx), model(idx), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adapter", ["lora", "sgd"])
def test_a_ternary_model_evaluates_with_ttt(adapter: str) -> None:
    from eval_helpers import assert_ttt_adapts_only_when_it_should

    torch.manual_seed(0)
    model = GPT(ModelParams(**TINY, block_linear="ternary", ternary_group=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    stream = random_stream([40, 9, 27, 3], seed=10)
    assert_ttt_adapts_only_when_it_should(model, stream, adapter)
