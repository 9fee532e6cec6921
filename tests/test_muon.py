"""Muon numerics and the parameter-group table."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.base import validate_section
from pgolf.config.train import MuonParams, OptimParams
from pgolf.errors import ParamsError
from pgolf.model import build_model
from pgolf.optim import Muon, assign_groups, build_optimizers, muon_update, newton_schulz, set_schedule
from pgolf.optim.muon import BASELINE_COEFFICIENTS, POLAR_EXPRESS_COEFFICIENTS

torch.set_num_threads(1)
CUBIC = ((1.5, -0.5, 0.0),)  # classic Newton-Schulz: converges to the polar factor
# The baseline quintic trades accuracy for speed: its singular values land in about [0.68, 1.14].
BASELINE_BAND = (0.6, 1.2)
POLAR_EXPRESS_BAND = (0.8, 1.2)
CUBIC_TOLERANCE = 1e-3


def singular_values(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(x.double())


def conditioned(rows: int, cols: int, kappa: float, seed: int) -> torch.Tensor:
    """A random rows x cols matrix with singular values spread over [1, kappa]."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    s = torch.linspace(1.0, kappa, k, dtype=torch.float64)
    return (u * s) @ v.T


# Stated tolerance: for any shape up to 48 and condition number <= MAX_CONDITION, 5 steps put
# every singular value inside the band of the coefficient set.
MAX_CONDITION = 10.0


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 48), st.integers(2, 48), st.floats(1.0, MAX_CONDITION), st.integers(0, 10_000))
def test_muon_newton_schulz_brings_singular_values_near_one(rows, cols, kappa, seed):
    g = conditioned(rows, cols, kappa, seed).float()
    s = singular_values(newton_schulz(g, 5, BASELINE_COEFFICIENTS))
    assert BASELINE_BAND[0] <= s.min() and s.max() <= BASELINE_BAND[1]
    s = singular_values(newton_schulz(g, 5, POLAR_EXPRESS_COEFFICIENTS))
    assert POLAR_EXPRESS_BAND[0] <= s.min() and s.max() <= POLAR_EXPRESS_BAND[1]


def test_muon_cubic_schedule_converges_to_orthogonal():
    g = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    x = newton_schulz(g, 40, CUBIC)
    assert torch.allclose(singular_values(x), torch.ones(24, dtype=torch.float64), atol=CUBIC_TOLERANCE)
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    assert torch.allclose(x.double(), u @ vh, atol=1e-2)  # the polar factor


def test_muon_newton_schulz_keeps_shape_for_tall_matrices():
    g = torch.randn(40, 8)
    assert newton_schulz(g, 5, BASELINE_COEFFICIENTS).shape == (40, 8)


def test_muon_newton_schulz_rejects_bad_inputs():
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(3, 4, 5), 5, BASELINE_COEFFICIENTS)
    with pytest.raises(ValueError, match="triples"):
        newton_schulz(torch.randn(4, 5), 5, BASELINE_COEFFICIENTS * 2)


def test_muon_update_scale_and_row_normalize():
    g = torch.randn(32, 8) * torch.logspace(-2, 2, 32)[:, None]  # rows of very different norms
    plain = muon_update(g, 5, BASELINE_COEFFICIENTS, row_normalize=False)
    rows = muon_update(g, 5, BASELINE_COEFFICIENTS, row_normalize=True)
    assert torch.allclose(plain, newton_schulz(g, 5, BASELINE_COEFFICIENTS) * (32 / 8) ** 0.5)
    # MuonEq-R: rows are normalized BEFORE Newton-Schulz (so scaling a row of g changes nothing)
    unit = g / g.norm(dim=1, keepdim=True)
    assert torch.allclose(rows, newton_schulz(unit, 5, BASELINE_COEFFICIENTS) * (32 / 8) ** 0.5, atol=1e-6)
    assert torch.allclose(rows, muon_update(g * torch.rand(32, 1) * 10, 5, BASELINE_COEFFICIENTS, row_normalize=True), atol=1e-5)
    assert not torch.allclose(plain, rows, atol=1e-3)


def test_muon_weight_decay_is_decoupled():
    p = torch.nn.Parameter(torch.ones(4, 4))
    opt = Muon([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(4, 4)  # orthogonalized zero is zero: only the decay acts
    opt.step()
    assert torch.allclose(p.detach(), torch.full((4, 4), 1 - 0.1 * 0.5))


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.ones(4))], lr=0.1)


@pytest.mark.parametrize("tied", [True, False])
def test_muon_each_parameter_in_exactly_one_group(tied):
    model = build_model(dict(vocab_size=40, layers=3, width=16, heads=2, kv_heads=1, tied_embeddings=tied))
    groups = assign_groups(model)
    names = [n for members in groups.values() for n, _ in members]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    matrix = {n for n, _ in groups["matrix"]}
    assert matrix == {n for n, p in model.named_parameters() if n.startswith("blocks.") and n.endswith(".weight") and p.ndim == 2}
    assert [n for n, _ in groups["embed"]] == ["tok_emb.weight"]
    assert [n for n, _ in groups["head"]] == ([] if tied else ["lm_head.weight"])
    optimizers = build_optimizers(model, OptimParams())
    in_optimizers = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert sorted(in_optimizers) == sorted(id(p) for p in model.parameters())


def test_muon_a_few_steps_lower_the_loss_of_a_tiny_model():
    torch.manual_seed(0)
    model = build_model(dict(vocab_size=32, layers=2, width=32, heads=2, kv_heads=1))
    idx = torch.randint(0, 32, (4, 16))
    targets = (idx * 7 + 3) % 32  # a learnable map
    optimizers = build_optimizers(model, OptimParams())
    set_schedule(optimizers, 1.0, 0.9)
    before = model.loss(idx, targets).item()
    for _ in range(10):
        for opt in optimizers:
            opt.zero_grad()
        model.loss(idx, targets).backward()
        for opt in optimizers:
            opt.step()
    assert model.loss(idx, targets).item() < before - 0.5


def test_muon_schedule_sets_lr_and_momentum():
    model = build_model(dict(vocab_size=40, layers=2, width=16, heads=2, kv_heads=1))
    optimizers = build_optimizers(model, OptimParams())
    set_schedule(optimizers, 0.5, 0.9)
    for opt in optimizers:
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(group["base_lr"] * 0.5)
            if isinstance(opt, Muon):
                assert group["momentum"] == 0.9


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"ns_coefficients": [[1.0, 2.0]]}, "triple"),
        ({"ns_steps": 5, "ns_coefficients": [[1.0, 2.0, 3.0]] * 2}, "ns_steps=5"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_muon_params_reject_malformed(bad, message):
    with pytest.raises(ParamsError, match=message):
        validate_section(MuonParams, bad, "train.optim.matrix")
