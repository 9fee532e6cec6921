"""GPTQ and round-to-nearest on tiny 16x32 tensors: the properties the method rests on."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pgolf.config.quantize import QuantizeParams
from pgolf.quant.apply import quantize_state
from pgolf.quant.gptq import act_order_permutation, damped_cholesky, gptq, inverse_permutation, relative_output_error, upper_cholesky_of_inverse
from pgolf.quant.groups import tensor_group, unique_tensors
from pgolf.quant.hessian import HessianAccumulator, collect_hessians
from pgolf.quant.rtn import clip_search_scale, dequantize, qmax_for_bits, quantize, rtn, std_scale

torch.set_num_threads(1)
ROWS, COLS = 16, 32


def weights(seed: int) -> torch.Tensor:
    return torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(seed))


def correlated_hessian(seed: int, samples: int = 256) -> torch.Tensor:
    """H = X^T X for inputs with strongly correlated, unevenly scaled features."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(COLS, COLS, generator=g) * torch.linspace(0.1, 3.0, COLS)
    x = torch.randn(samples, COLS, generator=g) @ mix
    acc = HessianAccumulator(COLS)
    acc.add_batch(x)
    return acc.h.float()


def test_quantize_is_pure_round_and_clamp():
    x = torch.tensor([[-10.0, -1.4, -0.5, 0.49, 2.6, 100.0]])
    before = x.clone()
    q = quantize(x, torch.tensor([[1.0]]), 3)
    assert q.tolist() == [[-3.0, -1.0, -0.0, 0.0, 3.0, 3.0]]
    assert torch.equal(x, before)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_identity_hessian_equals_rtn(bits, act_order):
    w = weights(bits)
    maxq = qmax_for_bits(bits)
    scale = std_scale(w, 3.0, maxq)
    q_gptq = gptq(w, torch.eye(COLS), scale, maxq, block_size=8, damp_frac=0.01, act_order=act_order)
    assert torch.equal(q_gptq, rtn(w, scale, maxq))


def test_act_order_permutation_round_trips():
    h = correlated_hessian(1)
    perm = act_order_permutation(h)
    assert sorted(perm.tolist()) == list(range(COLS))
    diag = torch.diagonal(h)[perm]
    assert bool((diag[:-1] >= diag[1:]).all())
    x = weights(2)
    assert torch.equal(x[:, perm][:, inverse_permutation(perm)], x)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.integers(2, 8), k=st.floats(0.5, 20.0), act_order=st.booleans(), block=st.sampled_from([1, 5, 32, 128]))
def test_gptq_values_stay_in_range(seed, bits, k, act_order, block):
    w = weights(seed) * 4
    maxq = qmax_for_bits(bits)
    q = gptq(w, correlated_hessian(seed), std_scale(w, k, maxq), maxq, block_size=block, act_order=act_order)
    assert q.dtype == torch.int8 and q.shape == (ROWS, COLS)
    assert int(q.abs().max()) <= maxq


@pytest.mark.parametrize("bits", [3, 4, 6])
def test_gptq_beats_rtn_on_output_error(bits):
    w, h = weights(3), correlated_hessian(4)
    maxq = qmax_for_bits(bits)
    scale = std_scale(w, 4.0, maxq)
    err_rtn = relative_output_error(w, dequantize(rtn(w, scale, maxq), scale), h)
    err_gptq = relative_output_error(w, dequantize(gptq(w, h, scale, maxq, block_size=8), scale), h)
    assert err_gptq < 0.8 * err_rtn


def test_block_size_does_not_change_the_result():
    w, h = weights(5), correlated_hessian(6)
    maxq = qmax_for_bits(4)
    scale = std_scale(w, 4.0, maxq)
    results = [gptq(w, h, scale, maxq, block_size=b) for b in (1, 7, 32)]
    # lazy batching is exact up to float rounding: near-ties may flip a few entries at most
    assert all(int((r != results[0]).sum()) <= 2 for r in results[1:])


def test_dead_columns_are_zero():
    w, h = weights(7), correlated_hessian(8)
    h[3, :] = 0
    h[:, 3] = 0
    q = gptq(w, h, std_scale(w, 3.0, 7), 7)
    assert int(q[:, 3].abs().sum()) == 0


def test_clip_search_is_no_worse_than_absmax():
    w = weights(9)
    w[0, 0] = 40.0  # one outlier: clipping it pays off
    maxq = qmax_for_bits(4)
    best = clip_search_scale(w, maxq)
    absmax = w.abs().amax(dim=1, keepdim=True) / maxq
    err = lambda s: ((w - dequantize(quantize(w, s, maxq), s)) ** 2).sum(dim=1)
    assert bool((err(best) <= err(absmax.half().float()) + 1e-6).all())


def test_scales_are_float16_exact():
    s = std_scale(weights(10), 12.0, 31)
    assert torch.equal(s, s.half().float())


def test_groups_by_name():
    assert tensor_group("blocks.0.attn.c_q.weight") == "attention"
    assert tensor_group("blocks.3.mlp.fc.weight") == "mlp"
    assert tensor_group("tok_emb.weight") == "embedding"
    assert tensor_group("lm_head.weight") == "embedding"
    assert tensor_group("blocks.0.proj.weight") == "other"


class TinyNet(nn.Module):
    """Embedding tied with the head, a shared-input q/k/v triple, an MLP, a small gain."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(64, 32)
        self.attn = nn.ModuleDict({n: nn.Linear(32, 32, bias=False) for n in ("q", "k", "v")})
        self.mlp = nn.Sequential(nn.Linear(32, 64, bias=False), nn.ReLU(), nn.Linear(64, 32, bias=False))
        self.gain = nn.Parameter(torch.ones(32))
        self.lm_head = nn.Linear(32, 64, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        x = x + self.attn["q"](x) * self.attn["k"](x) + self.attn["v"](x)
        x = x + self.mlp(x) * self.gain
        return self.lm_head(x)


def test_collect_hessians_shares_inputs_and_matches_explicit_sum():
    torch.manual_seed(0)
    net = TinyNet()
    batches = [torch.randint(0, 64, (2, 8)) for _ in range(3)]
    hs = collect_hessians(net, batches)
    assert hs.tokens == 48
    assert hs.layers["attn.q.weight"] == hs.layers["attn.k.weight"] == hs.layers["attn.v.weight"]
    assert hs.layers["mlp.0.weight"] != hs.layers["attn.q.weight"]
    x = torch.cat([net.wte(b).reshape(-1, 32) for b in batches]).detach()
    assert torch.allclose(hs.for_weight("attn.v.weight"), x.T @ x, rtol=1e-4, atol=1e-4)
    assert len(hs.hessians) == 4  # q/k/v, mlp.0, mlp.2, lm_head


def test_quantize_state_ties_passthrough_and_report():
    torch.manual_seed(0)
    net = TinyNet()
    hs = collect_hessians(net, [torch.randint(0, 64, (4, 16)) for _ in range(2)])
    params = QuantizeParams(min_numel=1024)
    state = net.state_dict()
    unique, aliases = unique_tensors(state)
    assert aliases == {"lm_head.weight": "wte.weight"}
    qm = quantize_state(state, {n: hs.for_weight(n) for n in hs.layers}, params, {"vocab_size": 64})
    assert set(qm.quantized) == {"wte.weight", "attn.q.weight", "attn.k.weight", "attn.v.weight", "mlp.0.weight", "mlp.2.weight"}
    assert set(qm.passthrough) == {"gain"} and qm.passthrough["gain"].dtype == torch.float16
    assert qm.quantized["wte.weight"].bits == 7 and qm.quantized["mlp.0.weight"].bits == 6
    rows = {r["name"]: r for r in qm.report}
    assert rows["mlp.0.weight"]["method"] == "gptq" and rows["wte.weight"]["method"] == "gptq"
    assert all(r["rel_output_err"] <= r["rel_output_err_rtn"] * 1.05 for r in qm.report)
    restored = qm.state_dict()
    assert restored["lm_head.weight"] is restored["wte.weight"]
    net.load_state_dict(restored)


def test_quantize_state_with_clip_search_and_rtn():
    torch.manual_seed(1)
    net = TinyNet()
    hs = collect_hessians(net, [torch.randint(0, 64, (4, 16))])
    hessians = {n: hs.for_weight(n) for n in hs.layers}
    clip = quantize_state(net.state_dict(), hessians, QuantizeParams(min_numel=1024, scale="clip_search", clip_candidates=8), {})
    plain = quantize_state(net.state_dict(), hessians, QuantizeParams(min_numel=1024, method="rtn"), {})
    assert {r["method"] for r in plain.report} == {"rtn"}
    for qt in clip.quantized.values():
        assert int(qt.q.abs().max()) <= qmax_for_bits(qt.bits)
    assert {r["name"] for r in clip.report} == {r["name"] for r in plain.report}


def test_damping_rises_until_the_hessian_factors_and_both_factors_agree():
    """A rank-1 H with no damping is singular: the shared retry raises the damping until it
    factors; the lower factor and the inverse's upper factor describe the same damped matrix."""
    x = torch.tensor([[1.0, 2.0, 3.0]])
    h = x.T @ x
    lower = damped_cholesky(h, 0.0)
    upper = upper_cholesky_of_inverse(h, 0.0).double()
    damped = lower @ lower.T
    assert torch.allclose(torch.linalg.inv(upper.T @ upper), damped, rtol=1e-4)
    assert float((damped - h.double()).diagonal().min()) > 0  # damping was added
    with pytest.raises(ValueError, match="not positive definite"):
        damped_cholesky(torch.full((2, 2), float("nan")), 0.01)
