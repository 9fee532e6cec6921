"""The GPT: shapes, causality, softcap, zero-initialized outputs, every option builds, rebuild from dict."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pgolf.config.base import validate_section
from pgolf.config.model import ModelParams
from pgolf.errors import ParamsError
from pgolf.model import GPT, build_model, count_params, model_config_dict
from pgolf.model.layers import apply_rope, rope_frequencies, rope_tables

torch.set_num_threads(1)
TINY = dict(vocab_size=50, layers=3, width=32, heads=4, kv_heads=2)


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return build_model({**TINY, **overrides})


def randomize(model: nn.Module) -> nn.Module:
    """Give zero-initialized matrices random values so every path carries signal."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def test_model_forward_shape_dtype_and_softcap():
    model = randomize(tiny(logit_softcap=2.0))
    logits = model(torch.randint(0, 50, (2, 7)))
    assert logits.shape == (2, 7, 50) and logits.dtype == torch.float32
    assert logits.abs().max() <= 2.0


def test_model_is_causal():
    model = randomize(tiny())
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-5)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_model_output_projections_start_at_zero_and_are_linear_modules():
    model = tiny(tied_embeddings=False)
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.proj.weight) == 0
        assert torch.count_nonzero(block.mlp.proj.weight) == 0
    assert torch.count_nonzero(model.lm_head.weight) == 0
    block_matrices = [n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2 and "resid_mix" not in n]
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(block_matrices) <= linear_weights


def test_model_gqa_shapes():
    model = tiny()
    attn = model.blocks[0].attn
    assert attn.c_q.weight.shape == (32, 32)
    assert attn.c_k.weight.shape == (16, 32) and attn.c_v.weight.shape == (16, 32)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"activation": "leaky_relu2", "leaky_slope": 0.5},
        {"rope_dims": 4},
        {"logit_softcap": None},
        {"tied_embeddings": False},
        {"skips": False},
        {"resid_mix": False},
        {"layers": 1},
        {"kv_heads": 4},
        {"mlp_mult": 3.0},
    ],
)
def test_model_every_option_builds_trains_and_rebuilds(overrides):
    model = tiny(**overrides)
    idx = torch.randint(0, 50, (2, 6))
    loss = model.loss(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    rebuilt = build_model(model_config_dict(model))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(rebuilt(idx), model(idx))
    assert count_params(rebuilt) == count_params(model)


def test_model_skip_weights_only_with_skips():
    assert tiny(skips=True).skip_weights.shape == (1, 32)
    assert tiny(skips=False).skip_weights is None


def test_model_needs_resolved_vocab():
    with pytest.raises(ParamsError, match="vocab_size"):
        GPT(ModelParams())


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"width": 30, "heads": 4}, "divisible"),
        ({"heads": 4, "kv_heads": 3}, "kv_heads"),
        ({"rope_dims": 3}, "rope_dims"),
        ({"rope_dims": 64}, "rope_dims"),
        ({"activation": "gelu"}, "activation"),
        ({"unknown": 1}, "unknown key"),
    ],
)
def test_model_bad_config_names_the_key(bad, key):
    with pytest.raises(ParamsError, match=key):
        validate_section(ModelParams, {**TINY, **bad}, "train.model")


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4).map(lambda k: 2 * k), st.integers(1, 9))
def test_model_rope_is_a_rotation_and_leaves_unrotated_dims(rotated, seq_len):
    x = torch.randn(1, 2, seq_len, 8)
    cos, sin = rope_tables(seq_len, rope_frequencies(rotated, 10000.0))
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(y[..., rotated:], x[..., rotated:])
    assert torch.allclose(y[:, :, 0], x[:, :, 0])  # position 0 is not rotated


def test_model_rope_relative_positions():
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    cos, sin = rope_tables(10, rope_frequencies(8, 100.0))
    def score(i, j):
        return (apply_rope(q, cos[i : i + 1], sin[i : i + 1]) * apply_rope(k, cos[j : j + 1], sin[j : j + 1])).sum()
    assert torch.allclose(score(5, 2), score(7, 4), atol=1e-5)


def test_rotary_tables_are_cached_for_the_longest_length_and_sliced_bit_for_bit():
    from pgolf.model.layers import Rotary

    rotary = Rotary(8, 10000.0)
    long_cos, _ = rotary.tables(300)
    cos, sin = rotary.tables(17)
    assert rotary._cache[0] == 300  # a shorter width does not replace the cache (no recompiles as widths alternate)
    ref_cos, ref_sin = rope_tables(17, rotary.inv_freq)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert rotary.tables(301)[0].shape[0] == 301 and rotary._cache[0] == 301
