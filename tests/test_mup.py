"""muP (PR #4): the logit multiplier, the spectral initialization and Muon update scale, the Adam
groups left alone, the coordinate check, and a model without muP unchanged."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.model import ModelParams
from pgolf.config.train import OptimParams
from pgolf.model import build_model
from pgolf.model import mup
from pgolf.model.gpt import GPT
from pgolf.optim import Muon, assign_groups, build_optimizers, muon_update, newton_schulz
from pgolf.optim.coord_check import activation_rms, coord_check, width_exponents
from pgolf.optim.muon import BASELINE_COEFFICIENTS, UPDATE_SCALES, baseline_scale, spectral_scale

torch.set_num_threads(1)
VOCAB = 64


def config(width: int, base: int | None, **extra) -> ModelParams:
    """head_dim 16 at every width (muP holds the head size; the head count grows)."""
    return ModelParams(vocab_size=VOCAB, layers=2, width=width, heads=width // 16, kv_heads=width // 32, mup_base_width=base, **extra)


def test_mup_logit_multiplier_is_base_over_width():
    assert mup.logit_multiplier(config(256, 64)) == 0.25
    assert mup.logit_multiplier(config(64, 64)) == 1.0
    with pytest.raises(ValueError, match="mup_base_width is off"):
        mup.logit_multiplier(config(64, None))


def test_mup_logits_are_scaled_before_the_softcap():
    torch.manual_seed(0)
    on = GPT(config(128, 32, logit_softcap=None))
    off = GPT(config(128, None, logit_softcap=None))
    off.load_state_dict(on.state_dict())
    idx = torch.randint(0, VOCAB, (2, 8))
    assert torch.allclose(on(idx), off(idx) * 0.25, atol=1e-6)
    capped = GPT(config(128, 32, logit_softcap=0.01))
    capped.load_state_dict(on.state_dict())
    assert torch.allclose(capped(idx), 0.01 * torch.tanh(on(idx) / 0.01), atol=1e-6)


def test_mup_scales():
    assert spectral_scale(32, 8) == 2.0 and baseline_scale(32, 8) == 2.0
    assert spectral_scale(8, 32) == 0.5 and baseline_scale(8, 32) == 1.0  # they differ on wide matrices only
    g = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    ns = newton_schulz(g, 5, BASELINE_COEFFICIENTS)
    assert torch.equal(muon_update(g, 5, BASELINE_COEFFICIENTS, False, "spectral"), ns * 0.5)
    assert torch.equal(muon_update(g, 5, BASELINE_COEFFICIENTS, False), ns)
    tall = g.T.contiguous()  # the default (muP off) is the baseline's expression, bit for bit
    assert torch.equal(muon_update(tall, 5, BASELINE_COEFFICIENTS, False), newton_schulz(tall, 5, BASELINE_COEFFICIENTS) * max(1.0, 32 / 8) ** 0.5)
    with pytest.raises(ValueError, match="unknown Muon update_scale 'mup'"):
        muon_update(g, 5, BASELINE_COEFFICIENTS, False, "mup")
    with pytest.raises(ValueError, match="unknown Muon update_scale"):
        Muon([torch.nn.Parameter(torch.ones(4, 4))], lr=0.1, update_scale="mup")
    assert set(UPDATE_SCALES) == {"baseline", "spectral"}


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 40), st.integers(2, 40), st.floats(1.0, 10.0), st.integers(0, 1000))
def test_mup_spectral_update_moves_rms_by_the_same_amount_at_any_shape(rows, cols, kappa, seed):
    """The spectral update's RMS-to-RMS operator norm, ||U|| * sqrt(cols/rows), is Newton-Schulz's
    singular-value band (about [0.68, 1.14] for the baseline quintic, condition number <= 10)
    whatever the shape."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    g = ((u * torch.linspace(1.0, kappa, k, dtype=torch.float64)) @ v.T).float()
    update = muon_update(g, 5, BASELINE_COEFFICIENTS, False, "spectral")
    rms_norm = torch.linalg.matrix_norm(update.double(), ord=2).item() * (cols / rows) ** 0.5
    assert 0.6 <= rms_norm <= 1.2


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 1000))
def test_mup_spectral_init_has_every_singular_value_sqrt_fan_out_over_fan_in(rows, cols, seed):
    w = torch.empty(rows, cols)
    mup.spectral_init_(w, torch.Generator().manual_seed(seed))
    s = torch.linalg.svdvals(w.double())
    assert torch.allclose(s, torch.full_like(s, (rows / cols) ** 0.5), rtol=1e-4)


def test_mup_spectral_init_rejects_vectors():
    with pytest.raises(ValueError, match="matrix"):
        mup.spectral_init_(torch.empty(4))


@pytest.mark.parametrize("tied", [True, False])
def test_mup_init_weights(tied):
    torch.manual_seed(0)
    model = GPT(config(64, 32, tied_embeddings=tied, bigram_buckets=16, bigram_dim=8))
    names = [name for name, _ in mup.hidden_matrices(model)]
    assert "bigram.lift" in names and len(names) == 2 * 6 + 1  # q k v proj fc proj per block, one lift
    for name, module in mup.hidden_matrices(model):
        w = module.weight.detach().double()
        if module.zero_init:
            assert not w.any(), name
        else:
            s = torch.linalg.svdvals(w)
            assert torch.allclose(s, torch.full_like(s, (w.size(0) / w.size(1)) ** 0.5), rtol=1e-4), name
    if tied:  # the embedding keeps its width-independent std
        assert model.tok_emb.weight.std().item() == pytest.approx(0.005, rel=0.05)
    else:
        assert not model.lm_head.weight.any()


def test_mup_hidden_matrices_are_the_muon_group():
    """muP's matrix-like parameters are exactly those Muon owns (the block matrices and the lifts)."""
    model = GPT(config(64, 32, bigram_buckets=16, bigram_dim=8, value_embed_layers=[1], value_embed_dim=8, attn_out_gate=True))
    hidden = {f"{name}.weight" for name, _ in mup.hidden_matrices(model)}
    assert hidden == {name for name, _ in assign_groups(model)["matrix"]}
    assert {"bigram.lift.weight", "value_embed.lift.weight"} <= hidden


def test_mup_refuses_a_model_without_block_matrices():
    with pytest.raises(ValueError, match="no block matrices"):
        mup.init_weights(GPT(config(64, None, block_linear="hyper")))


def test_mup_off_builds_the_baseline_bit_for_bit():
    torch.manual_seed(0)
    baseline = GPT(config(64, None))
    torch.manual_seed(0)
    on = GPT(config(64, 64))
    weights = {name: p for name, p in on.named_parameters()}
    changed = {name for name, p in baseline.named_parameters() if not torch.equal(p, weights[name])}
    assert changed == {f"{name}.weight" for name, m in mup.hidden_matrices(on) if not m.zero_init}
    assert not mup.is_on(baseline) and mup.is_on(on)


@pytest.mark.parametrize("base, scale", [(None, "baseline"), (32, "spectral")])
def test_mup_optimizers(base, scale):
    """muP switches Muon to the spectral scale and leaves every Adam learning rate as configured."""
    optimizers = build_optimizers(GPT(config(128, base)), OptimParams())
    muon = [opt for opt in optimizers if isinstance(opt, Muon)]
    assert len(muon) == 1 and all(group["update_scale"] == scale for group in muon[0].param_groups)
    adam = {group["group_name"]: group["lr"] for opt in optimizers if not isinstance(opt, Muon) for group in opt.param_groups}
    assert adam == {"embed": OptimParams().embed.lr, "scalar": OptimParams().scalar.lr}


def test_mup_muon_state_saved_without_update_scale_loads_as_baseline():
    p = torch.nn.Parameter(torch.ones(4, 4))
    opt = Muon([p], lr=0.1, update_scale="spectral")
    state = opt.state_dict()
    del state["param_groups"][0]["update_scale"]
    opt.load_state_dict(state)
    assert opt.param_groups[0]["update_scale"] == "baseline"


def test_mup_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = GPT(config(64, 32))
    idx = torch.randint(0, VOCAB, (2, 8))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(idx), model(idx))


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, VOCAB, (4, 32), generator=gen)
        out.append((idx, torch.roll(idx, -1, dims=1)))
    return out


def test_mup_activation_rms_names_every_layer():
    torch.manual_seed(0)
    found = activation_rms(GPT(config(32, None)), batches(1)[0][0])
    assert set(found) == {"block0.attn", "block0.mlp", "block0", "block1.attn", "block1.mlp", "block1", "logits"}
    assert found["block0.attn"] == 0.0  # zero-initialized output projections
    assert found["block0"] > 0.5


def test_mup_width_exponents():
    table = {64: {"a": 1.0, "b": 2.0}, 256: {"a": 1.0, "b": 8.0}}
    assert width_exponents(table) == {"a": 0.0, "b": 1.0}
    with pytest.raises(ValueError, match="two widths"):
        width_exponents({64: {"a": 1.0}})


def test_mup_coordinate_check_is_flat_with_mup_and_not_without():
    """After 4 steps at widths 64/128/256: with muP every layer's RMS is flat (|exponent| < 0.3);
    without it the logits grow about in proportion to the width. (Muon already keeps the hidden
    layers flat without muP: only the embedding-head path drifts.)"""
    data = batches(4)
    with_mup = width_exponents(coord_check(lambda w: config(w, 64), (64, 128, 256), OptimParams(), data))
    without = width_exponents(coord_check(lambda w: config(w, None), (64, 128, 256), OptimParams(), data))
    assert all(abs(a) < 0.3 for a in with_mup.values()), with_mup
    assert without["logits"] > 0.7, without
    assert all(abs(a) < 0.3 for name, a in without.items() if name != "logits"), without
