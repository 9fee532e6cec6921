"""Issue 15, items 1 and 5 (model side): recursive weight sharing, local attention and the short-conv
hybrid. Sharing adds no parameters and equals an unshared model with copied blocks; the window mask
hides exactly what it should (one layer exactly, several within layers*(W-1)); the convolution is
causal and never crosses a BOS; everything compiles without graph breaks and survives training,
packing, loading and every evaluation method."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from eval_helpers import random_stream
from pgolf.config.eval import EvalPlainParams, EvalSlidingParams, EvalTTTParams
from pgolf.config.model import ModelParams
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.dist import DistInfo
from pgolf.errors import ParamsError
from pgolf.eval.methods import METHODS
from pgolf.model import build_model, count_params
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.checkpoint import load_model
from pgolf.model.docmask import DenseDocumentMask, FlexDocumentMask, MaskRule, build_flex_compiled, document_segments
from pgolf.model.recurrence import unet_halves
from pgolf.model.sharing import shared_order, stored_vs_effective
from pgolf.model.shortconv import causal_depthwise_conv
from pgolf.model.window import dense_window_mask, receptive_field
from pgolf.optim.groups import assign_groups
from pgolf.pack.artifact import parse_artifact
from pgolf.pack.load import artifact_from_parsed, model_from_artifact
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import quantize_state
from pgolf.quant.hessian import collect_hessians
from pgolf.train.loop import train
from train_helpers import VOCAB, make_shards, tiny_params

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager flex on CPU is the point
torch.set_num_threads(1)
BOS = 1
TINY = dict(vocab_size=50, layers=4, width=32, heads=4, kv_heads=2)
KERNEL_TOL = dict(rtol=1e-5, atol=1e-6)  # dense SDPA against FlexAttention: same math, other accumulation order


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model({**TINY, **overrides})


def randomize(model):
    """Every parameter random (zero-initialized projections included), so every path carries signal."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tokens(length: int, seed: int = 2, bos_at: tuple[int, ...] = ()) -> torch.Tensor:
    idx = torch.randint(2, 50, (1, length), generator=torch.Generator().manual_seed(seed))
    idx[0, list(bos_at)] = BOS
    return idx


# --- recursive weight sharing --------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.data())
def test_shared_order_maps_logical_layer_i_to_block_i_mod_p(layers, data):
    blocks = data.draw(st.integers(1, layers))
    order = shared_order(layers, blocks)
    assert len(order) == layers and all(order[i] == i % blocks for i in range(layers))
    assert set(order) == set(range(blocks))  # every stored block is used


def test_shared_order_refuses_impossible_block_counts():
    with pytest.raises(ValueError, match="between 1 and layers"):
        shared_order(4, 5)
    with pytest.raises(ValueError, match="between 1 and layers"):
        shared_order(4, 0)


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_sharing_stores_p_blocks_and_adds_no_parameters(blocks):
    shared, unshared = tiny(layers=8, shared_blocks=blocks), tiny(layers=8)
    assert len(shared.blocks) == blocks
    assert {k.split(".")[1] for k in shared.state_dict() if k.startswith("blocks.")} == {str(b) for b in range(blocks)}
    per_block = count_params(unshared.blocks[0])
    assert count_params(shared) == count_params(unshared) - (8 - blocks) * per_block  # only the blocks are shared
    assert shared.orders[True] == shared.orders[False] == unet_halves([i % blocks for i in range(8)])


@pytest.mark.parametrize(("layers", "blocks"), [(6, 1), (6, 2), (6, 3), (5, 2), (4, 4)])
def test_shared_model_equals_an_unshared_model_with_copied_blocks(layers, blocks):
    options = dict(layers=layers, skip_gates=True, doc_attention=True)
    shared = randomize(tiny(shared_blocks=blocks, **options))
    unshared = tiny(**options)
    state = {}
    for name, value in shared.state_dict().items():
        if name.startswith("blocks."):
            _, b, rest = name.split(".", 2)
            for i in range(int(b), layers, blocks):  # logical layer i reads block i mod P
                state[f"blocks.{i}.{rest}"] = value.clone()
        else:
            state[name] = value
    unshared.load_state_dict(state, strict=True)
    idx = tokens(20, bos_at=(0, 9))
    with torch.no_grad():
        assert torch.equal(shared(idx), unshared(idx))
        swapped = {k: (v.flip(0) if k.endswith("c_q.weight") and layers > blocks else v) for k, v in state.items()}
        if layers > blocks:  # the copies matter: one changed copy changes the logits
            unshared.load_state_dict(swapped)
            assert not torch.equal(shared(idx), unshared(idx))


def test_shared_blocks_gradients_sum_over_their_applications():
    model = randomize(tiny(layers=4, shared_blocks=2))
    model.loss(tokens(12), tokens(12, seed=3)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("blocks."))


def test_per_layer_options_follow_the_physical_block():
    model = tiny(layers=8, shared_blocks=4, ln_scale=True, xsa_layers=1, value_embed_layers=[1], conv_layers=[2])
    assert [b.norm_scale for b in model.blocks] == [1 / math.sqrt(b + 1) for b in range(4)]
    assert [b.attn is not None and b.attn.xsa for b in model.blocks] == [False, False, False, True]  # the last of the P blocks
    assert model.blocks[2].conv is not None and model.blocks[2].attn is None
    assert model.value_embed.slot == {1: 0}
    assert tiny(layers=8).blocks[3].attn.xsa is False and tiny(layers=8, xsa_layers=1).blocks[7].attn.xsa


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(shared_blocks=2, xsa_layers=3), r"xsa_layers \(3\) must be <= shared_blocks \(2\)"),
        (dict(shared_blocks=2, value_embed_layers=[2]), r"value_embed_layers \[2\] must be < shared_blocks \(2\)"),
        (dict(shared_blocks=2, conv_layers=[0, 3]), r"conv_layers \[3\] must be < shared_blocks \(2\)"),
        (dict(value_embed_layers=[1], conv_layers=[1]), r"share layers \[1\]: a convolution layer has no attention values"),
        (dict(layers=8, shared_blocks=4, parallel_from=2), r"parallel_from \(2\)"),
    ],
)
def test_impossible_per_layer_combinations_are_one_line_params_errors(overrides, message):
    with pytest.raises(ParamsError, match=message) as info:
        tiny(**overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("layers", [4, 8])
@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_stored_vs_effective_counts_p_blocks_applied_layers_times(layers, blocks):
    config = ModelParams(vocab_size=50, layers=layers, width=32, heads=4, kv_heads=2, shared_blocks=blocks)
    state = torch.random.get_rng_state()
    depth = stored_vs_effective(config)
    assert torch.equal(torch.random.get_rng_state(), state)  # counting draws no random numbers
    model = build_model(config.model_dump())
    per_block = count_params(model.blocks[0])
    assert depth.stored_params == count_params(model) and depth.block_params == blocks * per_block
    assert depth.physical_blocks == blocks and depth.effective_layers == layers
    assert depth.applied_block_params == layers * per_block


def test_stored_vs_effective_counts_recurrence_loops():
    config = ModelParams(vocab_size=50, layers=4, width=32, heads=4, kv_heads=2, recur_start=1, recur_end=2, recur_loops=2)
    depth = stored_vs_effective(config)
    assert (depth.physical_blocks, depth.effective_layers) == (4, 8)


# --- local attention -----------------------------------------------------------------------------


segment_rows = st.integers(1, 12).flatmap(lambda T: st.lists(st.lists(st.integers(0, 2), min_size=T, max_size=T).map(sorted), min_size=1, max_size=3))


@settings(max_examples=40, deadline=None)
@given(segment_rows, st.integers(1, 14), st.booleans())
def test_window_mask_hides_exactly_the_keys_outside_the_window_and_the_document(rows, window, documents):
    T = len(rows[0])
    segments = torch.tensor(rows) if documents else None
    mask = MaskRule(T, torch.device("cpu"), segments, window).dense()
    assert mask.shape == ((len(rows) if documents else 1), 1, T, T)
    for b in range(mask.size(0)):
        for t in range(T):
            for s in range(T):
                same = not documents or rows[b][s] == rows[b][t]
                assert bool(mask[b, 0, t, s]) == (t - window < s <= t and same)
    assert mask[:, 0].diagonal(dim1=-2, dim2=-1).all()  # no empty row
    assert torch.equal(dense_window_mask(T, window), MaskRule(T, torch.device("cpu"), None, window).dense()[0, 0])


@pytest.mark.parametrize("documents", [False, True], ids=["window", "window+documents"])
@pytest.mark.parametrize("window", [1, 3, 8, 40])
def test_flex_window_and_the_dense_mask_agree(window, documents):
    B, T = 2, 24
    q, k, v = rand(B, 4, T, 8, seed=1), rand(B, 2, T, 8, seed=2), rand(B, 2, T, 8, seed=3)
    segments = document_segments(tokens(T, bos_at=(0, 5, 17)).expand(B, T), BOS) if documents else None
    rule = MaskRule(T, torch.device("cpu"), segments, window)
    dense = DenseDocumentMask.from_rule(rule).attend(q, k, v)
    torch.testing.assert_close(FlexDocumentMask.from_rule(rule).attend(q, k, v), dense, **KERNEL_TOL)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if window < T:
        assert (dense - full).abs().max() > 1e-2  # the window does change the result


def test_attention_window_of_the_whole_sequence_is_full_causal_attention():
    config = dict(vocab_size=50, layers=2, width=32, heads=4, kv_heads=2)
    full = CausalSelfAttention(ModelParams(**config))
    windowed = CausalSelfAttention(ModelParams(**config, attention_window=16))
    windowed.load_state_dict(randomize(full).state_dict())
    x = rand(2, 16, 32)
    torch.testing.assert_close(windowed(x), full(x), **KERNEL_TOL)
    assert not torch.allclose(windowed(rand(2, 17, 32)), full(rand(2, 17, 32)), atol=1e-3)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(2, 20), st.integers(0, 2**16))
def test_one_windowed_layer_reads_exactly_the_last_w_positions(window, t, seed):
    attn = randomize(CausalSelfAttention(ModelParams(vocab_size=50, layers=1, width=32, heads=4, kv_heads=2, attention_window=window)))
    x = rand(1, 21, 32, seed=seed)
    first = t - window + 1  # the first key position t reads
    before, inside = x.clone(), x.clone()
    before[:, : max(first, 0)] += rand(1, max(first, 0), 32, seed=seed + 1)
    inside[:, max(first, 0)] += 1.0
    with torch.no_grad():
        y, y_before, y_inside = attn(x), attn(before), attn(inside)
    assert torch.equal(y_before[:, t], y[:, t])
    assert (y_inside[:, t] - y[:, t]).abs().max() > 1e-4


@pytest.mark.parametrize(("layers", "window"), [(1, 4), (2, 3), (3, 2), (3, 4)])
def test_the_model_reaches_back_at_most_layers_times_w_minus_one(layers, window):
    model = randomize(tiny(layers=layers, attention_window=window, skips=False))
    reach = receptive_field(layers, window)
    idx = tokens(reach + 8)
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % 50
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, reach + 1 :], b[:, reach + 1 :])  # beyond the receptive field: bit for bit
    assert (a[:, reach] - b[:, reach]).abs().max() > 1e-6  # its edge is reached


def test_one_window_mask_is_built_per_forward_and_shared_by_every_layer():
    model = tiny(layers=3, attention_window=3, doc_attention=True)
    seen = []
    for block in model.blocks:
        block.attn.register_forward_pre_hook(lambda m, a: seen.append(a[1]))
    idx = tokens(10, bos_at=(0, 6))
    with torch.no_grad():
        model(idx)
    assert len(seen) == 3 and all(s is seen[0] for s in seen)
    expected = MaskRule(10, idx.device, document_segments(idx, BOS), 3).dense()
    assert torch.equal(seen[0].mask, expected)
    alone = tiny(layers=3, attention_window=3).attention_mask(None, idx)  # the window alone: one mask for every row
    assert alone.segments is None and torch.equal(alone.mask, dense_window_mask(10, 3).view(1, 1, 10, 10))
    assert tiny(layers=3).attention_mask(None, idx) is None  # off: no mask, SDPA's causal path


# --- the short convolution -----------------------------------------------------------------------


def conv1d_reference(y: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """torch's depthwise conv1d with K-1 zeros on the left: [B, T, C] -> [B, T, C]."""
    K = kernel.size(-1)
    return F.conv1d(F.pad(y.transpose(1, 2), (K - 1, 0)), kernel, groups=y.size(-1)).transpose(1, 2)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.integers(1, 12), st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**16))
def test_causal_depthwise_conv_is_a_left_padded_depthwise_conv1d(B, T, C, K, seed):
    y, kernel = rand(B, T, C, seed=seed), rand(C, 1, K, seed=seed + 1)
    torch.testing.assert_close(causal_depthwise_conv(y, kernel), conv1d_reference(y, kernel), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(causal_depthwise_conv(y, kernel, torch.zeros(B, T, dtype=torch.long)), conv1d_reference(y, kernel), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=4), st.integers(1, 5), st.integers(0, 2**16))
def test_causal_depthwise_conv_restarts_at_every_document(lengths, K, seed):
    T, C = sum(lengths), 3
    y, kernel = rand(1, T, C, seed=seed), rand(C, 1, K, seed=seed + 1)
    segments = torch.tensor([[d for d, n in enumerate(lengths) for _ in range(n)]])
    out = causal_depthwise_conv(y, kernel, segments)
    start = 0
    for n in lengths:  # each document convolved alone, as if it started the row
        torch.testing.assert_close(out[:, start : start + n], conv1d_reference(y[:, start : start + n], kernel), rtol=1e-5, atol=1e-6)
        start += n
    if len(lengths) > 1 and K > 1:
        assert not torch.allclose(causal_depthwise_conv(y, kernel), out)  # unsegmented, it would cross


def test_conv_layer_replaces_attention_with_named_plain_parameters():
    model = tiny(conv_layers=[0, 2], conv_kernel=3)
    assert [b.conv is not None for b in model.blocks] == [True, False, True, False]
    assert [b.attn is None for b in model.blocks] == [True, False, True, False]
    assert [b.mixer for b in model.blocks] == [model.blocks[0].conv, model.blocks[1].attn, model.blocks[2].conv, model.blocks[3].attn]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n.startswith("blocks.0.conv")}
    assert shapes == {"blocks.0.conv.in_proj.weight": (96, 32), "blocks.0.conv.kernel": (32, 1, 3), "blocks.0.conv.out_proj.weight": (32, 32)}
    assert torch.count_nonzero(model.blocks[0].conv.out_proj.weight) == 0  # zero-initialized like attention's proj
    assert model.blocks[0].conv.kernel.abs().max() <= 1 / math.sqrt(3)
    groups = {name: group for group, named in assign_groups(model).items() for name, _ in named}
    assert groups["blocks.0.conv.in_proj.weight"] == groups["blocks.0.conv.out_proj.weight"] == "matrix"  # Muon
    assert groups["blocks.0.conv.kernel"] == "scalar"  # 3-D: Adam, like the other small tensors


def test_conv_hybrid_is_causal():
    model = randomize(tiny(conv_layers=[0, 1, 3], conv_kernel=4))
    idx = tokens(16)
    for t in range(15):
        changed = idx.clone()
        changed[0, t + 1 :] = (idx[0, t + 1 :] + 7) % 50
        with torch.no_grad():
            a, b = model(idx), model(changed)
        assert torch.equal(a[:, : t + 1], b[:, : t + 1]), t
        assert not torch.allclose(a[:, t + 1], b[:, t + 1])


@pytest.mark.parametrize("conv_layers", [[0, 1, 2, 3], [0, 2]], ids=["all-conv", "hybrid"])
def test_conv_never_crosses_a_bos_with_doc_attention(conv_layers):
    model = randomize(tiny(conv_layers=conv_layers, conv_kernel=3, doc_attention=True))
    first, doc = tokens(7, seed=5, bos_at=(0,)), tokens(9, seed=6, bos_at=(0,))
    with torch.no_grad():
        together = model(torch.cat([first, doc], dim=1))[:, 7:]
        alone = model(doc)
        crossing = randomize(tiny(conv_layers=conv_layers, conv_kernel=3))(torch.cat([first, doc], dim=1))[:, 7:]
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert (crossing - alone).abs().max() > 1e-3  # without documents the earlier one leaks in


# --- torch.compile: no graph break ---------------------------------------------------------------

EVERY_PROPOSAL = dict(layers=6, shared_blocks=3, attention_window=4, conv_layers=[1], conv_kernel=3, doc_attention=True, xsa_layers=2, ln_scale=True, skip_gates=True)


@pytest.mark.parametrize(
    "options",
    [dict(shared_blocks=2), dict(attention_window=3), dict(conv_layers=[0, 3]), EVERY_PROPOSAL],
    ids=["shared", "window", "conv", "every"],
)
def test_proposals_compile_with_fullgraph_and_match_eager(options):
    torch._dynamo.reset()
    model = randomize(tiny(**options))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    idx = tokens(14, bos_at=(0, 8))
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), model(idx), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(idx)
    assert out.isfinite().all()
    out.logsumexp(-1).mean().backward()  # the training path: same graph, with autograd
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("documents", [False, True], ids=["window", "window+documents"])
def test_flex_window_mask_compiles_as_the_cuda_path_builds_it(documents):
    torch._dynamo.reset()
    attn = randomize(CausalSelfAttention(ModelParams(vocab_size=50, layers=1, width=32, heads=4, kv_heads=2, attention_window=5)))
    attn.requires_grad_(False)  # FlexAttention has no backward on CPU
    x = rand(2, 24, 32)
    segments = document_segments(tokens(24, bos_at=(0, 5, 17)).expand(2, 24), BOS) if documents else None

    def run(x):
        return attn(x, build_flex_compiled(MaskRule(24, x.device, segments, 5)))

    expected = attn(x, DenseDocumentMask.from_rule(MaskRule(24, x.device, segments, 5)))
    torch.testing.assert_close(torch.compile(run, backend="eager", fullgraph=True)(x), expected, **KERNEL_TOL)


# --- end to end: train, pack, load, evaluate ------------------------------------------------------

E2E = {
    "shared": dict(layers=4, shared_blocks=2),
    "window": dict(attention_window=8),
    "conv": dict(conv_layers=[0], conv_kernel=3),
    "every": dict(layers=4, shared_blocks=2, attention_window=8, conv_layers=[1], doc_attention=True),
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))


@pytest.mark.parametrize("option", list(E2E))
def test_each_proposal_trains_packs_loads_and_evaluates(option, shards, tmp_path):
    model_params = {**dict(layers=2, width=32, heads=2, kv_heads=1), **E2E[option]}
    params = tiny_params(tmp_path, model=model_params, iterations=6, val_every=3)
    result = train(params, shards, tmp_path / "out", DistInfo(0, 1, 0, torch.device("cpu"), None))
    assert math.isfinite(result.val_loss)
    model = load_model(tmp_path / "out" / "checkpoint")
    batches = [torch.randint(2, VOCAB, (2, 32), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    hessians = collect_hessians(model, batches)  # a shared block's matrices accumulate every application
    assert any(".conv.in_proj." in name for name in hessians.layers) == ("conv_layers" in E2E[option])
    per_weight = {name: hessians.hessians[group] for name, group in hessians.layers.items()}
    qm = quantize_state(model.state_dict(), per_weight, QuantizeParams(min_numel=256), model.config.model_dump(mode="json"))
    loaded = model_from_artifact(artifact_from_parsed(parse_artifact(pack_model(qm, PackParams()).data)), f"{option}.pgolf")
    reference = build_model(qm.model_config)
    reference.load_state_dict(qm.state_dict())
    idx = torch.randint(2, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(idx), reference(idx))
    stream = random_stream([30, 12, 45, 20], seed=3, vocab=VOCAB)
    for method, p in {
        "plain": EvalPlainParams(seq_len=32, legality_tokens=64, legality_samples=8),
        "sliding": EvalSlidingParams(window=32, stride=8, legality_tokens=64, legality_samples=8),
        "ttt": EvalTTTParams(chunk_tokens=8, window=16, batch_docs=2, lora_rank=2, legality_tokens=64),
    }.items():
        outcome = METHODS[method].evaluate(loaded.eval(), stream, p)
        assert 0 < outcome.result.val_bpb < 20, (method, outcome.result.val_bpb)


def test_short_conv_matrices_quantize_in_the_attention_group():
    """The convolution replaces attention in its blocks, so it is quantized at attention's bits, not as "other"."""
    from pgolf.quant.groups import tensor_group

    assert tensor_group("blocks.0.conv.in_proj.weight") == tensor_group("blocks.1.attn.c_q.weight") == "attention"
    assert tensor_group("blocks.0.conv.out_proj.weight") == "attention"
    assert tensor_group("blocks.0.mlp.fc.weight") == "mlp" and tensor_group("skip_weights") == "other"
