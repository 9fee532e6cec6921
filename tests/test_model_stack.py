"""The record-stack options of the GPT's residual side: each pure piece on tiny tensors, the
baseline unchanged bit for bit (against a fixture written by the code of commit 4de722e), and a
tiny model with every option on: trains, quantizes, packs, loads back and compiles without breaks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn

from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.config.train import OptimParams
from pgolf.errors import ParamsError
from pgolf.model import GPT, build_model, count_params
from pgolf.model.bigram import bigram_buckets
from pgolf.model.docmask import dense_document_mask, document_segments
from pgolf.model.lanes import FINAL_LANE, LaneMix, final_lane, lane_start
from pgolf.model.layers import rms_norm
from pgolf.model.lnscale import ln_scale
from pgolf.model.recurrence import logical_layers, unet_halves
from pgolf.model.skips import merge_skip
from pgolf.model.smear import SmearGate
from pgolf.model.softcap import AsymmetricSoftcap, softcap
from pgolf.optim.groups import assign_groups, build_optimizers
from pgolf.pack.artifact import parse_artifact
from pgolf.pack.load import artifact_from_parsed, model_from_artifact
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import quantize_state
from pgolf.quant.hessian import collect_hessians

torch.set_num_threads(1)
FIXTURE = Path(__file__).parent / "fixtures" / "model_stack_baseline.safetensors"
V, BOS = 40, 1
TINY = dict(vocab_size=V, layers=4, width=16, heads=4, kv_heads=2)
EVERY = dict(
    TINY, recur_start=1, recur_end=2, recur_loops=1, recur_from_progress=0.3, parallel_from=3, skip_gates=True,
    ln_scale=True, smear_gate=True, smear_window=4, asymmetric_softcap=True, bigram_buckets=64, bigram_dim=8,
    value_embed_layers=[1, 3], value_embed_dim=8, doc_attention=True, xsa_layers=4, attn_out_gate=True, attn_gate_window=4,
)


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return build_model({**TINY, **overrides})


def randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Perturb every parameter, so zero-initialized paths (projections, gates, tables) carry signal."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def tokens(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def copy_shared(src: nn.Module, dst: nn.Module) -> None:
    """dst takes every tensor of src that it has under the same name and shape."""
    own = dst.state_dict()
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False)


# --- the baseline is unchanged -----------------------------------------------------------------

@pytest.mark.parametrize("key", ["default", "untied"])
def test_baseline_init_and_logits_equal_commit_4de722e_bit_for_bit(key):
    with safe_open(str(FIXTURE), "pt") as f:
        config = json.loads(f.metadata()["configs"])[key]
        stored = {name: f.get_tensor(name) for name in f.keys() if name.startswith(f"{key}/")}
    part = lambda prefix: {n[len(prefix):]: t for n, t in stored.items() if n.startswith(prefix)}  # noqa: E731
    torch.manual_seed(0)
    model = build_model(config)
    init = part(f"{key}/init/")
    assert set(model.state_dict()) == set(init)  # no new parameter or buffer when every option is off
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, init[name]), name  # same draws from the seed, in the same order
    model.load_state_dict(part(f"{key}/weights/"), strict=True)
    with torch.no_grad():
        assert torch.equal(model(stored[f"{key}/idx"]), stored[f"{key}/logits"])


# --- depth recurrence --------------------------------------------------------------------------

def test_recurrence_logical_order_of_the_records():
    encoder, decoder = unet_halves(logical_layers(11, 3, 5, 2))
    assert encoder == [0, 1, 2, 3, 4, 5, 3, 4]
    assert decoder == [5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert unet_halves(logical_layers(11)) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, n - 1), st.integers(0, 4))))
def test_recurrence_order_repeats_only_the_span(case):
    layers, a, b, loops = case
    start, end = min(a, b), max(a, b)
    order = logical_layers(layers, start, end, loops)
    assert len(order) == layers + loops * (end - start + 1)
    assert sorted(set(order)) == list(range(layers))
    for layer in range(layers):
        assert order.count(layer) == (1 + loops if start <= layer <= end else 1)
    assert order[:start] == list(range(start)) and order[len(order) - (layers - end - 1):] == list(range(end + 1, layers))


def test_recurrence_rejects_a_span_outside_the_blocks():
    with pytest.raises(ValueError, match="span"):
        logical_layers(4, 2, 4, 1)


def test_recurrence_adds_no_parameters_only_the_skips_it_creates():
    plain, looped = tiny(skips=False), tiny(skips=False, recur_start=1, recur_end=2, recur_loops=2)
    assert count_params(plain) == count_params(looped)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in looped.state_dict().items()}
    # With skips, the looped order pairs more layers: 8 logical layers -> 4 skips instead of 2.
    plain, looped = tiny(skip_gates=True), tiny(skip_gates=True, recur_start=1, recur_end=2, recur_loops=2)
    assert set(plain.state_dict()) == set(looped.state_dict())
    assert looped.skip_weights.shape == looped.skip_gates.shape == (4, 16) and plain.skip_weights.shape == (2, 16)
    assert count_params(looped) - count_params(plain) == 2 * 2 * 16


def block_calls(model: GPT, idx: torch.Tensor) -> list[int]:
    calls: list[int] = []
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, b in enumerate(model.blocks)]
    with torch.no_grad():
        model(idx)
    for h in handles:
        h.remove()
    return calls


def test_set_recurrence_switches_between_looped_and_plain_order():
    looped = randomize(tiny(recur_start=1, recur_end=2, recur_loops=2, skip_gates=True))
    idx = torch.randint(0, V, (2, 9))
    assert looped.recurrence_active  # a fresh (or loaded) model loops
    assert block_calls(looped, idx) == [0, 1, 2, 1, 2, 1, 2, 3]
    active = looped(idx)
    looped.set_recurrence(False)
    assert block_calls(looped, idx) == [0, 1, 2, 3]
    plain = tiny(skip_gates=True)
    copy_shared(looped, plain)
    with torch.no_grad():
        plain.skip_weights.copy_(looped.skip_weights[:2])
        plain.skip_gates.copy_(looped.skip_gates[:2])
        assert torch.equal(looped(idx), plain(idx))  # off = the plain model, first skip rows
        looped.set_recurrence(True)
        assert torch.equal(looped(idx), active) and not torch.allclose(active, plain(idx))


def test_hessians_accumulate_every_application_of_a_looped_block():
    model = randomize(tiny(recur_start=1, recur_end=2, recur_loops=2))
    batches = [torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    seen: list[torch.Tensor] = []
    handle = model.blocks[1].attn.c_q.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, 16)))
    hessians = collect_hessians(model, batches)
    handle.remove()
    assert sum(x.shape[0] for x in seen) == 3 * hessians.tokens == 3 * 2 * 16  # 3 applications per batch
    expected = sum((x.double().T @ x.double()) for x in seen).float()
    got = hessians.for_weight("blocks.1.attn.c_q.weight")
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    first_only = sum((x.double().T @ x.double()) for x in seen[::3]).float()
    assert not torch.allclose(got, first_only, rtol=1e-3)


# --- parallel lanes, skip gates, LN scale ---------------------------------------------------

def test_lane_mix_is_the_two_lane_update():
    mix = LaneMix()
    with torch.no_grad():
        mix.resid.copy_(torch.tensor([0.5, 2.0]))
        mix.post.copy_(torch.tensor([[1.0, 3.0], [5.0, 7.0]]))
    lanes = (torch.full((1, 1, 2), 1.0), torch.full((1, 1, 2), 10.0))
    attn_out, mlp_out = torch.full((1, 1, 2), 100.0), torch.full((1, 1, 2), 1000.0)
    a, m = mix(lanes, attn_out, mlp_out)
    assert torch.equal(a, torch.full((1, 1, 2), 0.5 + 100.0 + 5000.0))
    assert torch.equal(m, torch.full((1, 1, 2), 20.0 + 300.0 + 7000.0))
    assert torch.equal(LaneMix().resid.detach(), torch.tensor([1.1, 1.1])) and torch.equal(LaneMix().post.detach(), torch.ones(2, 2))


def test_final_lane_registry():
    a, m = torch.tensor([2.0]), torch.tensor([4.0])
    assert [final_lane((a, m), how).item() for how in ("mean", "attn", "mlp")] == [3.0, 2.0, 4.0]
    assert set(FINAL_LANE) == {"mean", "attn", "mlp"}
    with pytest.raises(ValueError, match="parallel_final"):
        final_lane((a, m), "sum")


def test_lane_start_in_the_records_orders_and_its_refusals():
    assert lane_start(*unet_halves(logical_layers(11, 3, 5, 2)), 8) == 6
    assert lane_start(*unet_halves(logical_layers(11)), 8) == 3
    assert lane_start([0, 1], [2, 3], None) is None
    with pytest.raises(ValueError, match="parallel_from"):
        lane_start([0, 1], [2, 3], 1)  # block 1 runs in the encoder
    with pytest.raises(ValueError, match="parallel_from"):
        lane_start(*unet_halves(logical_layers(6, 3, 4, 1)), 4)  # decoder [4, 3, 4, 5]: block 3 breaks the run
    with pytest.raises(ParamsError, match="parallel_from"):
        tiny(parallel_from=1)


def test_parallel_block_reads_each_lane_and_model_uses_the_final_lane():
    model = randomize(tiny(parallel_from=2))
    block, x0 = model.blocks[3], torch.randn(1, 5, 16)
    lanes = (torch.randn(1, 5, 16), torch.randn(1, 5, 16))
    with torch.no_grad():
        got = block.forward_lanes(lanes, x0)
        mix = block.resid_mix
        attn_out = block.attn_scale * block.attn(rms_norm(mix[0] * lanes[0] + mix[1] * x0))
        mlp_out = block.mlp_scale * block.mlp(rms_norm(lanes[1]))
        want = block.lane_mix(lanes, attn_out, mlp_out)
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want))
    assert model.blocks[1].lane_mix is None
    idx = torch.randint(0, V, (1, 7))
    outs = {}
    for how in FINAL_LANE:
        other = tiny(parallel_from=2, parallel_final=how)
        other.load_state_dict(model.state_dict())
        outs[how] = other(idx)
    assert not torch.allclose(outs["attn"], outs["mlp"]) and not torch.allclose(outs["mean"], outs["attn"])


def test_merge_skip_plain_and_gated():
    x, skip, w = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.rand(4) + 0.5
    assert torch.equal(merge_skip(x, skip, w), x + w * skip)
    assert torch.allclose(merge_skip(x, skip, w, torch.zeros(4)), 0.5 * (x + w * skip), atol=1e-6)  # init: the mean
    assert torch.allclose(merge_skip(x, skip, w, torch.full((4,), 30.0)), x, atol=1e-6)
    assert torch.allclose(merge_skip(x, skip, w, torch.full((4,), -30.0)), w * skip, atol=1e-6)


def test_ln_scale_multiplies_both_block_input_norms():
    assert ln_scale(0) == 1.0 and ln_scale(3) == 0.5
    model = randomize(tiny(ln_scale=True))
    seen = {}
    block = model.blocks[3]
    block.attn.register_forward_pre_hook(lambda m, a: seen.__setitem__("attn", a[0]))
    block.mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("mlp", a[0]))
    x, x0 = torch.randn(1, 4, 16), torch.randn(1, 4, 16)
    with torch.no_grad():
        block(x, x0)
        mixed = block.resid_mix[0] * x + block.resid_mix[1] * x0
    assert torch.allclose(seen["attn"], rms_norm(mixed) * 0.5, atol=1e-6)
    assert torch.allclose(seen["mlp"].pow(2).mean(-1), torch.full((1, 4), 0.25), atol=1e-4)


# --- embedding side: SmearGate, BigramHash, value embeddings ----------------------------------

def test_smear_gate_formula_and_identity_at_init():
    smear = SmearGate(window=2, bos_id=BOS)
    x, idx = torch.randn(1, 4, 3), tokens([5, 6, BOS, 7])
    assert torch.equal(smear(x, idx), x)  # lam = 0
    with torch.no_grad():
        smear.w.copy_(torch.tensor([0.3, -0.2]))
        smear.lam.fill_(0.7)
    y = smear(x, idx)
    for t in (1, 3):
        gate = 0.7 * torch.sigmoid(x[0, t, :2] @ smear.w.detach())
        assert torch.allclose(y[0, t], x[0, t] + gate * x[0, t - 1], atol=1e-6)
    assert torch.equal(y[0, 0], x[0, 0]) and torch.equal(y[0, 2], x[0, 2])  # row start and BOS untouched


def test_smear_never_carries_across_a_bos_even_without_doc_attention():
    model = randomize(tiny(smear_gate=True, smear_window=4, bigram_buckets=64, bigram_dim=8))
    idx = tokens([BOS, 7, 8, 9, BOS, 11, 12])
    changed = idx.clone()
    changed[0, 3] = 20
    with torch.no_grad():
        a, b = model.embed(idx), model.embed(changed)
    assert torch.equal(a[0, 4], b[0, 4])  # the BOS after the change: nothing leaks in
    assert not torch.allclose(a[0, 3], b[0, 3])
    idx2 = idx.clone()
    idx2[0, 4] = 30  # not a BOS: the same change now reaches position 4 through the smear and the bigram
    changed2 = idx2.clone()
    changed2[0, 3] = 20
    with torch.no_grad():
        assert not torch.allclose(model.embed(idx2)[0, 4], model.embed(changed2)[0, 4])


def test_bigram_buckets_hash_and_reserved_bucket():
    idx = tokens([3, 4, BOS, 4, 9], [BOS, 2, 2, 7, 0])
    got = bigram_buckets(idx, 64, BOS)
    reserved = 63
    for r in range(2):
        for t in range(5):
            if t == 0 or idx[r, t] == BOS:
                assert got[r, t] == reserved
            else:
                assert got[r, t] == ((36313 * int(idx[r, t])) ^ (27191 * int(idx[r, t - 1]))) % reserved
    with pytest.raises(ValueError, match="bigram_buckets"):
        bigram_buckets(idx, 1, BOS)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 65535), min_size=2, max_size=12), st.integers(2, 4096))
def test_bigram_bucket_of_a_bos_ignores_the_previous_token(row, buckets):
    idx = tokens(row)
    idx[0, -1] = BOS
    other = idx.clone()
    other[0, -2] = (other[0, -2] + 1) % 65536
    a, b = bigram_buckets(idx, buckets, BOS), bigram_buckets(other, buckets, BOS)
    assert a[0, -1] == b[0, -1] == buckets - 1 and bool(((a >= 0) & (a < buckets)).all())


@pytest.mark.parametrize("option", [dict(bigram_buckets=64, bigram_dim=8), dict(smear_gate=True, smear_window=4), dict(asymmetric_softcap=True)])
def test_identity_at_init_options_leave_the_logits_unchanged(option):
    base = randomize(tiny())
    model = tiny(**option)
    copy_shared(base, model)
    idx = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(idx), base(idx))


def test_value_embeddings_reach_the_listed_layers_at_every_application():
    model = randomize(tiny(value_embed_layers=[1, 3], value_embed_dim=8, recur_start=1, recur_end=2, recur_loops=1))
    got: list[tuple[int, object]] = []
    for i, block in enumerate(model.blocks):
        block.attn.register_forward_pre_hook(lambda m, a, i=i: got.append((i, None if a[2] is None else tuple(a[2].shape))))
    with torch.no_grad():
        model(torch.randint(0, V, (2, 5)))
    kv = (2, 5, 2 * 4)
    assert got == [(0, None), (1, kv), (2, None), (1, kv), (2, None), (3, kv)]
    assert model.value_embed.embed.weight.shape == (V, 8) and model.value_embed.lift.weight.shape == (8, 8)


def test_asymmetric_softcap_equals_the_plain_cap_at_init_and_caps_each_sign():
    z = torch.randn(1000) * 40
    cap = AsymmetricSoftcap(30.0)
    assert torch.equal(cap(z), softcap(z, 30.0))
    with torch.no_grad():
        cap.pos.fill_(5.0)
        cap.neg.fill_(20.0)
    y = cap(z)
    assert y.max() <= 5.0 and y.min() >= -20.0 and y.min() < -10.0
    assert torch.allclose(y[z < 0], softcap(z[z < 0], 20.0)) and torch.allclose(y[z >= 0], softcap(z[z >= 0], 5.0))


def test_asymmetric_softcap_gradients_are_those_of_one_cap_per_sign():
    z = (torch.randn(500, dtype=torch.float64) * 40).requires_grad_()
    pos, neg = torch.tensor(5.0, dtype=torch.float64, requires_grad=True), torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    reference = torch.where(z >= 0, pos * torch.tanh(z / pos), neg * torch.tanh(z / neg))
    grads_ref = torch.autograd.grad((reference * torch.arange(500.0, dtype=torch.float64)).sum(), (z, pos, neg))
    cap = AsymmetricSoftcap(1.0).double()
    with torch.no_grad():
        cap.pos.fill_(5.0)
        cap.neg.fill_(20.0)
    out = cap(z)
    grads = torch.autograd.grad((out * torch.arange(500.0, dtype=torch.float64)).sum(), (z, cap.pos, cap.neg))
    assert torch.equal(out, reference) and all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(grads, grads_ref))


# --- document attention ------------------------------------------------------------------------

def test_model_passes_document_segments_to_every_attention():
    model = tiny(doc_attention=True, layers=3)
    seen = []
    for block in model.blocks:
        block.attn.register_forward_pre_hook(lambda m, a: seen.append(a[1]))
    idx = tokens([BOS, 4, 5, BOS, 6, 7, 8])
    with torch.no_grad():
        model(idx)
        # one mask per forward, built from the BOS segments and shared by every layer
        assert len(seen) == 3 and all(s is seen[0] for s in seen)
        assert torch.equal(seen[0].mask, dense_document_mask(document_segments(idx, BOS)))
        given_segments = torch.zeros_like(idx)
        seen.clear()
        model(idx, given_segments)
    assert len(seen) == 3 and torch.equal(seen[0].mask, dense_document_mask(given_segments))


def test_a_document_packed_after_another_scores_as_if_alone():
    model = randomize(build_model({k: v for k, v in EVERY.items()}))
    doc = [BOS, 5, 9, 9, 12, 3, 7]
    packed = tokens([BOS, 20, 21, 22, 23] + doc)
    with torch.no_grad():
        alone, inside = model(tokens(doc)), model(packed)[:, 5:]
    assert torch.allclose(alone, inside, atol=1e-4)
    plain = randomize(build_model({**EVERY, "doc_attention": False}))
    with torch.no_grad():
        assert not torch.allclose(plain(tokens(doc)), plain(packed)[:, 5:], atol=1e-4)  # the check can fail


# --- optimizer groups --------------------------------------------------------------------------

def test_every_new_parameter_lands_in_its_group():
    model = build_model(EVERY)
    owner = {name: group for group, named in assign_groups(model).items() for name, _ in named}
    expected = {
        "tok_emb.weight": "embed", "bigram.embed.weight": "embed", "value_embed.embed.weight": "embed",
        "bigram.lift.weight": "matrix", "value_embed.lift.weight": "matrix", "blocks.1.attn.c_q.weight": "matrix",
        "bigram.scale": "scalar", "value_embed.scale": "scalar", "value_embed.layer_scales": "scalar",
        "skip_weights": "scalar", "skip_gates": "scalar", "smear_gate.w": "scalar", "smear_gate.lam": "scalar",
        "softcap.pos": "scalar", "softcap.neg": "scalar", "blocks.3.lane_mix.resid": "scalar", "blocks.3.lane_mix.post": "scalar",
        "blocks.0.resid_mix": "scalar",
    }
    assert {name: owner[name] for name in expected} == expected
    gates = [name for name in owner if "gate" in name]
    assert "skip_gates" in gates and all(owner[name] == "scalar" for name in gates)
    baseline = tiny()
    old_rule = {n for n, p in baseline.named_parameters() if n.startswith("blocks.") and p.ndim == 2 and not n.endswith("resid_mix")}
    assert {n for n, _ in assign_groups(baseline)["matrix"]} == old_rule


# --- every option together ---------------------------------------------------------------------

def markov_batch(generator: torch.Generator, rows: int = 4, length: int = 24) -> torch.Tensor:
    """Documents of a simple chain (next = 2*prev+1 mod V, with some noise), each starting at BOS."""
    idx = torch.empty(rows, length, dtype=torch.long)
    for r in range(rows):
        t = int(torch.randint(2, V, (1,), generator=generator))
        for c in range(length):
            if c % 12 == 0:
                idx[r, c] = BOS
                continue
            t = (2 * t + 1) % V if torch.rand(1, generator=generator) > 0.1 else int(torch.randint(2, V, (1,), generator=generator))
            idx[r, c] = max(t, 2)
    return idx


def test_every_option_trains_quantizes_packs_and_loads_back():
    torch.manual_seed(0)
    model = build_model(EVERY)
    optimizers = build_optimizers(model, OptimParams())
    g = torch.Generator().manual_seed(3)
    batches = [markov_batch(g) for _ in range(4)]
    losses = []
    for step in range(12):
        model.set_recurrence(step >= 4)  # the loop's switch, as training calls it
        idx = batches[step % 4]
        loss = model.loss(idx[:, :-1], idx[:, 1:])
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and sum(losses[-3:]) < sum(losses[:3])
    model.set_recurrence(True)
    hessians = collect_hessians(model, batches[:2])
    assert "bigram.lift.weight" in hessians.layers and "value_embed.lift.weight" in hessians.layers
    per_weight = {name: hessians.hessians[group] for name, group in hessians.layers.items()}  # as the quantize stage does
    qm = quantize_state(model.state_dict(), per_weight, QuantizeParams(min_numel=64), model.config.model_dump(mode="json"))
    assert {"bigram.embed.weight", "value_embed.embed.weight", "tok_emb.weight", "blocks.1.attn.c_q.weight"} <= set(qm.quantized)
    data = pack_model(qm, PackParams()).data
    loaded = model_from_artifact(artifact_from_parsed(parse_artifact(data)), "stack.pgolf")
    reference = build_model(qm.model_config)
    reference.load_state_dict(qm.state_dict())
    idx = batches[0]
    with torch.no_grad():
        assert loaded.recurrence_active and torch.equal(loaded(idx), reference(idx))
        assert torch.allclose(loaded(idx), model(idx), atol=0.5)  # quantized, still the trained model


def test_every_option_compiles_without_graph_breaks():
    model = randomize(build_model(EVERY)).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    idx = markov_batch(torch.Generator().manual_seed(5), rows=2, length=16)
    with torch.no_grad():
        for active in (True, False):
            model.set_recurrence(active)
            assert torch.allclose(compiled(idx), model(idx), atol=1e-5)
    model.train().set_recurrence(True)
    compiled(idx).logsumexp(-1).mean().backward()  # the training path: same graph, with autograd
    assert all(p.grad is not None for p in model.parameters())
    torch._dynamo.reset()
