"""Hypernetwork-generated block linears (PR #16): W is never formed, the hypernetwork holds every parameter once,
zero-init roles start at zero, rebuild + load regenerates the layers, compile/autocast/GPTQ work; the registry."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pgolf.config.model import ModelParams
from pgolf.config.quantize import QuantizeParams
from pgolf.model import GPT, build_model, count_params, model_config_dict
from pgolf.model.block import Block
from pgolf.model.hyperlinear import FACTOR_VARIANCE, HyperLinear, HyperNetwork
from pgolf.model.linears import BLOCK_LINEARS, ROLES, LinearFactory, LinearSpec
from pgolf.quant.apply import quantize_state
from pgolf.quant.hessian import collect_hessians
from train_helpers import assert_compiled_matches_eager

torch.set_num_threads(1)
VOCAB = 50
TINY = dict(vocab_size=VOCAB, layers=3, width=32, heads=4, kv_heads=2, block_linear="hyper", hyper_rank=3, hyper_embed_dim=6, hyper_hidden=10)


class OutputShapes(TorchDispatchMode):
    """Records the shape of every tensor an aten op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [(str(func), tuple(t.shape)) for t in tree_leaves(out) if isinstance(t, Tensor)]
        return out

    def full_matrices(self, in_features: int, out_features: int) -> list[tuple[str, tuple[int, ...]]]:
        return [(op, s) for op, s in self.shapes if len(s) >= 2 and s[-2:] in ((out_features, in_features), (in_features, out_features))]


def hyper(layers: int = 2, rank: int = 3, embed_dim: int = 5, hidden: int = 8) -> HyperNetwork:
    torch.manual_seed(0)
    return HyperNetwork(layers, ROLES, embed_dim, hidden, rank)


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return build_model({**TINY, **overrides})


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def test_hyper_linear_computes_x_times_the_generated_matrix() -> None:
    net = hyper()
    layer = HyperLinear(net, 1, "mlp.fc", 24, 40)
    x = torch.randn(2, 5, 24)
    r, c = net.factors(1, "mlp.fc")
    assert r.shape == (40, 3) and c.shape == (24, 3)
    w = net.weight(1, "mlp.fc")
    assert torch.allclose(w, r @ c.T / math.sqrt(24 * 3))
    assert torch.allclose(layer(x), F.linear(x, w), rtol=1e-5, atol=1e-6)


def test_hyper_linear_never_forms_the_matrix_forward_or_backward() -> None:
    net = hyper()
    layer = HyperLinear(net, 1, "mlp.fc", 24, 40)
    x = torch.randn(2, 5, 24, requires_grad=True)
    with OutputShapes() as log:
        layer(x).square().sum().backward()
    assert log.shapes and log.full_matrices(24, 40) == []
    assert all(p.grad is not None for p in (net.layer_emb, net.row_trunk.weight, net.heads["mlp"]["fc"].row.weight))
    # the detector does see a formed matrix: the naive layer is caught
    with OutputShapes() as naive:
        F.linear(x, net.weight(1, "mlp.fc")).square().sum().backward()
    assert naive.full_matrices(24, 40)


def test_a_hyper_model_never_forms_a_block_matrix() -> None:
    model = randomize(tiny(width=48, heads=4, kv_heads=1, mlp_mult=3.0))  # shapes 48x48, 48->12, 48->144, 144->48
    idx = torch.randint(0, VOCAB, (1, 5))
    with OutputShapes() as log:
        model.loss(idx, idx).backward()
    assert log.shapes
    for role_in, role_out in ((48, 12), (48, 144), (144, 48)):
        assert log.full_matrices(role_in, role_out) == [], (role_in, role_out)


def test_zero_init_roles_output_zero_at_init_and_learn() -> None:
    model = tiny()
    x, h = torch.randn(2, 5, 32), torch.randn(2, 5, 64)
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.proj(x)) == 0
        assert torch.count_nonzero(block.mlp.proj(h)) == 0
        assert torch.count_nonzero(block.attn.c_q(x)) > 0 and torch.count_nonzero(block.mlp.fc(x)) > 0
    idx = torch.randint(0, VOCAB, (2, 12))
    model.loss(idx, idx).backward()
    heads = model.linear_shared.heads
    assert torch.count_nonzero(heads["attn"]["proj"].row.weight.grad) > 0
    assert torch.count_nonzero(heads["mlp"]["proj"].row.weight.grad) > 0


def test_the_hypernetwork_is_the_only_holder_of_block_matrix_parameters() -> None:
    model = tiny()
    state = model.state_dict()
    shared = [k for k in state if k.startswith("linear_shared.")]
    assert shared and not any(".hyper." in k for k in state)
    assert not any(k.split(".")[-2] in ("c_q", "c_k", "c_v", "proj", "fc") for k in state if k.startswith("blocks."))
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))
    assert all(len(list(b.attn.c_q.parameters())) == 0 for b in model.blocks)
    # parameter count: embeddings, two trunks, and per role a row and a column head
    e, hidden, rank, width, mlp = 6, 10, 3, 32, 64
    shapes = {"attn.q": (32, 32), "attn.k": (32, 16), "attn.v": (32, 16), "attn.proj": (32, 32), "mlp.fc": (width, mlp), "mlp.proj": (mlp, width)}
    expected = (3 + len(ROLES)) * e + 2 * (2 * e) * hidden + sum(hidden * rank * (i + o) for i, o in shapes.values())
    assert count_params(model.linear_shared) == expected
    dense = GPT(ModelParams(**{**TINY, "block_linear": "dense"}))
    dense_matrices = sum(p.numel() for n, p in dense.named_parameters() if n.startswith("blocks.") and p.ndim == 2 and "resid_mix" not in n)
    assert count_params(model) == count_params(dense) - dense_matrices + expected


def test_rebuilding_and_loading_the_hypernetwork_regenerates_the_layers() -> None:
    model = randomize(tiny())
    idx = torch.randint(0, VOCAB, (2, 9))
    torch.manual_seed(7)
    rebuilt = build_model(model_config_dict(model))
    assert not torch.allclose(rebuilt(idx), model(idx))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(rebuilt(idx), model(idx))


def test_a_deep_copy_generates_from_its_own_hypernetwork() -> None:
    model = randomize(tiny())
    twin = copy.deepcopy(model)
    assert all(b.attn.c_q.hyper is twin.linear_shared for b in twin.blocks)
    with torch.no_grad():
        for p in twin.linear_shared.parameters():
            p.zero_()
    idx = torch.randint(0, VOCAB, (1, 6))
    assert not torch.allclose(twin(idx), model(idx))


def test_factors_are_recomputed_from_the_current_weights() -> None:
    """Nothing is cached: an optimizer step on the hypernetwork changes the next forward."""
    model = randomize(tiny())
    idx = torch.randint(0, VOCAB, (1, 6))
    before = model(idx).detach()
    with torch.no_grad():
        model.linear_shared.heads["attn"]["v"].col.weight.mul_(2.0)
    assert not torch.allclose(model(idx), before)


def test_generated_matrices_start_with_the_dense_entry_variance() -> None:
    torch.manual_seed(0)
    net = HyperNetwork(6, ROLES, 32, 64, 8)
    ratios = []
    for layer in range(6):
        for role in ROLES:
            net.add(layer, role, 128, 96, False)
            ratios.append(net.weight(layer, role).var().item() * 3 * 128)  # dense: uniform(+-1/sqrt(in)), variance 1/(3 in)
    assert 0.7 < sum(ratios) / len(ratios) < 1.4
    assert FACTOR_VARIANCE**2 == pytest.approx(1 / 3)


def test_hyper_model_compiles_without_graph_breaks_and_matches_eager() -> None:
    model = randomize(tiny())
    assert_compiled_matches_eager(model, torch.randint(0, VOCAB, (2, 12)))


def test_hyper_model_runs_under_bf16_autocast() -> None:
    model = randomize(tiny())
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - model.loss(idx, idx).item()) < 0.1
    assert torch.isfinite(model.linear_shared.row_trunk.weight.grad).all()


def test_gptq_calibrates_and_quantizes_the_hypernetwork_and_the_result_loads() -> None:
    model = randomize(tiny())
    batches = [torch.randint(0, VOCAB, (2, 12)) for _ in range(2)]
    hs = collect_hessians(model, batches)
    assert not any(name.startswith("blocks.") and "resid_mix" not in name for name in hs.layers)
    heads = [n for n in hs.layers if n.startswith("linear_shared.heads.")]
    assert len(heads) == 2 * len(ROLES) and {"linear_shared.row_trunk.weight", "linear_shared.col_trunk.weight"} <= set(hs.layers)
    hessians = {name: hs.for_weight(name) for name in hs.layers}
    qm = quantize_state(model.state_dict(), hessians, QuantizeParams(min_numel=64), model_config_dict(model))
    assert {"linear_shared.heads.attn.q.row.weight", "linear_shared.heads.mlp.fc.col.weight"} <= set(qm.quantized)
    groups = {row["name"]: row["group"] for row in qm.report}
    assert groups["linear_shared.heads.attn.q.row.weight"] == "attention" and groups["linear_shared.heads.mlp.fc.col.weight"] == "mlp"
    loaded = build_model(qm.model_config)
    loaded.load_state_dict({k: v.float() for k, v in qm.state_dict().items()}, strict=True)
    idx = batches[0]
    assert abs(loaded.loss(idx, idx).item() - model.loss(idx, idx).item()) < 0.05


@settings(max_examples=25, deadline=None)
@given(rank=st.integers(1, 6), in_features=st.integers(1, 9), out_features=st.integers(1, 9), layer=st.integers(0, 1))
def test_any_shape_and_rank_matches_the_formed_matrix(rank: int, in_features: int, out_features: int, layer: int) -> None:
    net = hyper(rank=rank)
    lin = HyperLinear(net, layer, "attn.v", in_features, out_features)
    x = torch.randn(3, in_features)
    assert torch.allclose(lin(x), x @ net.weight(layer, "attn.v").T, rtol=1e-4, atol=1e-6)


def test_one_head_per_role_refuses_a_different_shape_or_init() -> None:
    net = hyper()
    HyperLinear(net, 0, "attn.q", 16, 16)
    with pytest.raises(ValueError, match="attn.q of layer 1 is \\[8, 16\\]"):
        HyperLinear(net, 1, "attn.q", 16, 8)
    with pytest.raises(ValueError, match="zero_init=True"):
        HyperLinear(net, 1, "attn.q", 16, 16, zero_init=True)
    with pytest.raises(ValueError, match="unknown matrix role 'attn.o'"):
        HyperLinear(net, 0, "attn.o", 16, 16)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        HyperLinear(net, 2, "attn.k", 16, 8)


def test_hyper_blocks_need_the_models_hypernetwork() -> None:
    config = ModelParams(**TINY)
    with pytest.raises(ValueError, match="build blocks through GPT"):
        Block(config)
    with pytest.raises(ValueError, match="needs the model's HyperNetwork"):
        LinearFactory(config, None)(LinearSpec(0, "attn.q", 32, 32))


@pytest.mark.parametrize("name", ["dense", "hyper", "ternary"])
def test_every_registered_block_linear_is_accepted_and_builds(name: str) -> None:
    assert name in BLOCK_LINEARS
    model = build_model({**TINY, "block_linear": name})
    idx = torch.randint(0, VOCAB, (1, 5))
    assert model(idx).shape == (1, 5, VOCAB)


def test_an_unknown_block_linear_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="must be one of 'dense', 'hyper', 'ternary'"):
        ModelParams(block_linear="hypr")


def test_default_dense_model_is_unchanged_by_the_hyper_fields() -> None:
    """hyper_* fields are inert unless block_linear=hyper: the dense model is built bit for bit the same."""
    torch.manual_seed(0)
    a = GPT(ModelParams(vocab_size=VOCAB, layers=2, width=32, heads=4, kv_heads=2)).state_dict()
    torch.manual_seed(0)
    b = GPT(ModelParams(vocab_size=VOCAB, layers=2, width=32, heads=4, kv_heads=2, hyper_rank=16, hyper_hidden=7)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "linear_shared" not in "".join(a)


def test_the_hypernetwork_trains_in_its_own_adam_group_at_its_own_lr() -> None:
    from pgolf.config.train import OptimParams
    from pgolf.optim.groups import assign_groups, build_optimizers

    model = tiny()
    groups = assign_groups(model)
    shared = {name for name, _ in model.named_parameters() if name.startswith("linear_shared.")}
    assert shared and {name for name, _ in groups["hyper"]} == shared
    assert not shared & {name for name, _ in groups["matrix"] + groups["scalar"]}
    lrs = {g["group_name"]: g["base_lr"] for opt in build_optimizers(model, OptimParams()) for g in opt.param_groups}
    assert lrs["hyper"] == OptimParams().hyper.lr == 0.01 and lrs["scalar"] == 0.04
    dense = GPT(ModelParams(vocab_size=64, layers=2, width=16, heads=2, kv_heads=1))
    assert assign_groups(dense)["hyper"] == []


@pytest.mark.parametrize("adapter", ["lora", "sgd"])
def test_a_hyper_model_evaluates_with_ttt(adapter: str) -> None:
    """LoRA adapts the generated block matrices (HyperLinear) as it adapts dense ones: lr 0 is the
    frozen score bit for bit, adapting changes it."""
    from eval_helpers import assert_ttt_adapts_only_when_it_should, random_stream

    model = randomize(tiny()).eval()
    stream = random_stream([40, 9, 27, 3], seed=10, vocab=TINY["vocab_size"])
    assert_ttt_adapts_only_when_it_should(model, stream, adapter)
