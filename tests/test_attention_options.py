"""Attention options (issue 12): the baseline against a frozen fixture, XSA, the sparse output gate,
value embeddings, document attention (dense mask and FlexAttention), and torch.compile without graph breaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn
from torch.nn.attention.flex_attention import flex_attention

from pgolf.config.model import ModelParams
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.attn_gate import gate_heads, init_gate_weight
from pgolf.model.docmask import (
    DenseDocumentMask,
    FlexDocumentMask,
    build_flex_compiled,
    dense_document_mask,
    document_mask,
    document_segments,
)
from pgolf.model.xsa import exclude_self_value, uses_xsa

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager flex on CPU is the point
torch.set_num_threads(1)
FIXTURE = Path(__file__).parent / "fixtures" / "attention_baseline.safetensors"
TINY = dict(vocab_size=50, layers=2, width=32, heads=4, kv_heads=2)
# Packed-versus-alone tolerance (float32): RoPE rotates q and k by angles t*f computed at absolute
# positions, so the score q_t.k_s depends on t - s only up to the rounding of cos/sin at each
# absolute angle (about ulp(t*f) <= 64 * 6e-8 rad for T <= 64); the softmax also sums a different
# number of exact zeros in a different order. Values are O(1), so 1e-5 is ~100x that error and
# ~1000x below the cross-document change a missing mask causes (checked below).
PACK_TOL = dict(rtol=1e-5, atol=1e-5)
# Dense SDPA versus FlexAttention: the same float32 math, different accumulation order.
KERNEL_TOL = dict(rtol=1e-5, atol=1e-6)


def build(layer: int = 0, **overrides) -> CausalSelfAttention:
    """An attention module whose every weight is random (the zero-initialized projection included)."""
    attn = CausalSelfAttention(ModelParams(**{**TINY, **overrides}), layer)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return attn


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- the baseline, bit for bit -------------------------------------------------------------------


def fixture_cases() -> list[str]:
    with safe_open(str(FIXTURE), "pt") as f:
        return list(json.loads(f.metadata()["configs"]))


@pytest.mark.parametrize("key", fixture_cases())
def test_options_off_match_the_frozen_baseline_bit_for_bit(key):
    with safe_open(str(FIXTURE), "pt") as f:
        config = json.loads(f.metadata()["configs"])[key]
        t = {name: f.get_tensor(name) for name in f.keys() if name.startswith(f"{key}/")}
    weights = {name.split("/weights/")[1]: value for name, value in t.items() if "/weights/" in name}
    attn = CausalSelfAttention(ModelParams(**config), layer=1)
    assert set(attn.state_dict()) == set(weights)  # options off add no parameter
    attn.load_state_dict(weights)
    x = t[f"{key}/x"].clone().requires_grad_(True)
    y = attn(x)
    (y * t[f"{key}/r"]).sum().backward()
    assert torch.equal(y.detach(), t[f"{key}/y"])
    assert torch.equal(x.grad, t[f"{key}/grad_x"])


# --- XSA -----------------------------------------------------------------------------------------


def test_uses_xsa_selects_the_last_layers():
    assert [uses_xsa(i, 5, 0) for i in range(5)] == [False] * 5
    assert [uses_xsa(i, 5, 2) for i in range(5)] == [False, False, False, True, True]
    assert all(uses_xsa(i, 5, 5) for i in range(5))


def xsa_reference(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Head by head: query head h reads kv head h // (H / Hkv)."""
    group = y.size(1) // v.size(1)
    out = torch.empty_like(y)
    for h in range(y.size(1)):
        vh = v[:, h // group]
        unit = vh / vh.norm(dim=-1, keepdim=True)
        out[:, h] = y[:, h] - (y[:, h] * unit).sum(-1, keepdim=True) * unit
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(2, 8), st.integers(0, 2**16))
def test_xsa_output_is_orthogonal_to_its_groups_normalized_value(batch, kv_heads, group, T, D, seed):
    y, v = rand(batch, kv_heads * group, T, D, seed=seed), rand(batch, kv_heads, T, D, seed=seed + 1)
    out = exclude_self_value(y, v)
    torch.testing.assert_close(out, xsa_reference(y, v))
    v_of_head = v.repeat_interleave(group, dim=1)
    unit = v_of_head / v_of_head.norm(dim=-1, keepdim=True)
    assert (out * unit).sum(-1).abs().max() < 1e-5
    # what was removed is along the value: y - out is parallel to v
    removed = y - out
    torch.testing.assert_close(removed, (removed * unit).sum(-1, keepdim=True) * unit, atol=1e-5, rtol=1e-5)


def test_xsa_module_heads_are_orthogonal_to_their_own_kv_value_only():
    attn = build(layer=1, xsa_layers=1)
    assert attn.xsa and not build(layer=0, xsa_layers=1).xsa
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(32))  # the output is the concatenated heads
    x = rand(2, 9, 32)
    with torch.no_grad():
        heads = attn(x).view(2, 9, 4, 8)
        v = attn.c_v(x).view(2, 9, 2, 8)
    unit = F.normalize(v, dim=-1)
    for h in range(4):
        assert (heads[:, :, h] * unit[:, :, h // 2]).sum(-1).abs().max() < 1e-5
        assert (heads[:, :, h] * unit[:, :, 1 - h // 2]).sum(-1).abs().max() > 1e-2  # the other group's value is not removed


# --- sparse attention-output gate ----------------------------------------------------------------


def test_gate_weight_is_a_plain_zero_parameter_named_out_gate_weight():
    attn = CausalSelfAttention(ModelParams(**TINY, attn_out_gate=True, attn_gate_window=5))
    params = dict(attn.named_parameters())
    assert params["out_gate_weight"].shape == (4, 5) and torch.count_nonzero(params["out_gate_weight"]) == 0
    linear_weights = {f"{n}.weight" for n, m in attn.named_modules() if isinstance(m, nn.Linear)}
    assert "out_gate_weight" not in linear_weights
    assert "out_gate_weight" not in dict(CausalSelfAttention(ModelParams(**TINY)).named_parameters())


def test_gate_at_init_halves_every_heads_output():
    gated, plain = CausalSelfAttention(ModelParams(**TINY, attn_out_gate=True)), build()
    gated.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(gated.out_gate_weight, init_gate_weight(4, 12))
    x = rand(2, 7, 32)
    torch.testing.assert_close(gated(x), 0.5 * plain(x))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.floats(0.25, 4.0), st.integers(0, 2**16))
def test_gate_heads_matches_a_per_head_loop_and_reads_only_the_window(heads, window, scale, seed):
    y, x, w = rand(2, 5, heads, 3, seed=seed), rand(2, 5, 8, seed=seed + 1), rand(heads, window, seed=seed + 2)
    out = gate_heads(y, x, w, scale)
    for h in range(heads):
        g = torch.sigmoid(scale * (x[..., :window] * w[h]).sum(-1))  # [B, T]
        torch.testing.assert_close(out[:, :, h], y[:, :, h] * g[..., None])
    x_tail = x.clone()
    x_tail[..., window:] += 10.0
    assert torch.equal(gate_heads(y, x_tail, w, scale), out)


def test_gate_scale_changes_the_gate():
    y, x, w = rand(1, 4, 2, 3), rand(1, 4, 8), rand(2, 3)
    assert not torch.allclose(gate_heads(y, x, w, 1.0), gate_heads(y, x, w, 3.0))


# --- value embeddings ----------------------------------------------------------------------------


def test_value_embed_adds_to_the_values():
    attn, shifted = build(), build()
    extra = rand(16, 32, seed=5)
    with torch.no_grad():
        shifted.c_v.weight.add_(extra)
    x = rand(2, 6, 32)
    torch.testing.assert_close(attn(x, value_embed=F.linear(x, extra)), shifted(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(attn(x, value_embed=torch.zeros(2, 6, 16)), attn(x))
    assert not torch.allclose(attn(x, value_embed=rand(2, 6, 16)), attn(x))


# --- document attention --------------------------------------------------------------------------


def test_document_segments_split_at_bos_and_every_max_tokens():
    idx = torch.tensor([[5, 1, 7, 7, 7, 7, 1, 3], [1, 2, 2, 2, 2, 2, 2, 2]])
    assert document_segments(idx, bos_id=1).tolist() == [[0, 1, 1, 1, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 0, 0]]
    assert document_segments(idx, bos_id=1, max_tokens=3).tolist() == [[0, 1, 1, 1, 2, 2, 3, 3], [0, 0, 0, 1, 1, 1, 2, 2]]
    with pytest.raises(ValueError, match="max_tokens"):
        document_segments(idx, 1, max_tokens=0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        document_segments(idx[0], 1)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=9), min_size=1, max_size=3).filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_dense_mask_is_causal_same_segment_with_a_true_diagonal(rows):
    segments = torch.tensor(rows)
    mask = dense_document_mask(segments)
    B, T = segments.shape
    assert mask.shape == (B, 1, T, T)
    for b in range(B):
        for t in range(T):
            for s in range(T):
                assert bool(mask[b, 0, t, s]) == (s <= t and rows[b][s] == rows[b][t])
    assert mask[:, 0].diagonal(dim1=-2, dim2=-1).all()


def qkv(B: int = 2, T: int = 24, H: int = 4, Hkv: int = 2, D: int = 8):
    return rand(B, H, T, D, seed=1), rand(B, Hkv, T, D, seed=2), rand(B, Hkv, T, D, seed=3)


def packed_segments(B: int = 2, T: int = 24) -> torch.Tensor:
    idx = torch.randint(2, 50, (B, T), generator=torch.Generator().manual_seed(4))
    idx[0, [0, 5, 6, 17]] = 1
    idx[1, [3, 20]] = 1
    return document_segments(idx, bos_id=1)


def test_flex_attention_and_the_dense_mask_agree():
    q, k, v = qkv()
    segments = packed_segments()
    dense = DenseDocumentMask.build(segments).attend(q, k, v)
    flex = FlexDocumentMask.build(segments).attend(q, k, v)
    torch.testing.assert_close(flex, dense, **KERNEL_TOL)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (dense - causal).abs().max() > 1e-2  # the documents do change the result


@pytest.mark.parametrize("builder", [DenseDocumentMask.build, FlexDocumentMask.build], ids=["dense", "flex"])
def test_every_position_its_own_document_reads_only_its_own_value(builder):
    q, k, v = qkv(T=10)
    y = builder(torch.arange(10).expand(2, 10)).attend(q, k, v)
    assert not y.isnan().any()
    torch.testing.assert_close(y, v.repeat_interleave(2, dim=1), **KERNEL_TOL)


def test_one_segment_equals_plain_causal_attention():
    attn, x = build(), rand(2, 11, 32)
    torch.testing.assert_close(attn(x, segments=torch.zeros(2, 11, dtype=torch.long)), attn(x), **KERNEL_TOL)


@pytest.mark.parametrize("builder", [DenseDocumentMask.build, FlexDocumentMask.build], ids=["dense", "flex"])
@settings(max_examples=12, deadline=None)
@given(st.integers(0, 20), st.integers(1, 12), st.integers(0, 12), st.integers(0, 2**16))
def test_a_document_packed_with_others_equals_it_alone(builder, before, length, after, seed):
    attn = build(xsa_layers=2, attn_out_gate=True)
    with torch.no_grad():
        attn.out_gate_weight.copy_(rand(4, 12, seed=seed + 9))
    T = before + length + after
    packed = rand(1, T, 32, seed=seed)
    doc = packed[:, before : before + length]
    segments = torch.tensor([[0] * before + [1] * length + [2] * after])
    ve = rand(1, T, 16, seed=seed + 1)
    with torch.no_grad():
        together = attn(packed, builder(segments), value_embed=ve)[:, before : before + length]
        alone = attn(doc, builder(torch.zeros(1, length, dtype=torch.long)), value_embed=ve[:, before : before + length])
        unmasked = attn(packed, value_embed=ve)[:, before : before + length]
    torch.testing.assert_close(together, alone, **PACK_TOL)
    if before:  # without the mask the earlier document leaks in, far beyond the tolerance
        assert (unmasked - alone).abs().max() > 1e-3


def test_document_mask_dispatches_by_device():
    segments = packed_segments()
    assert isinstance(document_mask(segments), DenseDocumentMask)
    with pytest.raises(ValueError, match="no mask for device 'meta'"):
        document_mask(segments.to("meta"))


def test_prebuilt_mask_equals_segments_and_wrong_shapes_are_refused():
    attn, x, segments = build(), rand(2, 24, 32), packed_segments()
    assert torch.equal(attn(x, segments), attn(x, document_mask(segments)))
    with pytest.raises(ValueError, match=r"segments must be \[B, T\] = \[2, 24\], got \[2, 23\]"):
        attn(x, segments[:, :-1])


def test_flex_path_accepts_mixed_dtypes_as_under_autocast():
    q, k, v = qkv()
    segments = packed_segments()
    y = FlexDocumentMask.build(segments).attend(q, k, v.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), DenseDocumentMask.build(segments).attend(q, k, v), atol=3e-2, rtol=3e-2)


# --- torch.compile: no graph break with each option ----------------------------------------------

OPTIONS = {
    "baseline": {},
    "xsa": dict(xsa_layers=2),
    "gate": dict(attn_out_gate=True, attn_gate_window=6, attn_gate_scale=2.0),
    "all": dict(xsa_layers=2, attn_out_gate=True),
}


# Each option alone, then all of them with each attention path (value embeddings are always passed).
COMPILE_CASES = [("baseline", "none"), ("xsa", "none"), ("gate", "none"), ("all", "none"), ("all", "segments"), ("all", "flex"), ("baseline", "flex")]


@pytest.mark.parametrize(("option", "mask"), COMPILE_CASES)
def test_compiles_with_fullgraph_and_matches_eager(option, mask):
    torch._dynamo.reset()
    attn = build(layer=1, **OPTIONS[option])
    if mask == "flex":
        attn.requires_grad_(False)  # FlexAttention has no backward on CPU
    x, ve, segments = rand(2, 24, 32), rand(2, 24, 16), packed_segments()
    if mask == "flex":  # the CUDA builder's traced branch (plain kernels, fused by the enclosing compile)
        def run(x, ve, segments):
            return attn(x, build_flex_compiled(segments), value_embed=ve)
        expected = attn(x, FlexDocumentMask.build(segments), value_embed=ve)
    else:
        seg = segments if mask == "segments" else None
        def run(x, ve, segments):
            return attn(x, seg, value_embed=ve)
        expected = run(x, ve, segments)
    compiled = torch.compile(run, backend="eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compiled(x, ve, segments).isfinite().all()
    torch.testing.assert_close(compiled(x, ve, segments), expected, **KERNEL_TOL)
