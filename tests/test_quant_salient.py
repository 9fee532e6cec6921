"""AWQ-lite (#1908): salient column blocks on a finer grid inside the same GPTQ solve, stored as the
`salient` extra, counted in the artifact and applied at load."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.errors import ArtifactError
from pgolf.model import build_model
from pgolf.pack.artifact import parse_artifact
from pgolf.pack.load import artifact_from_parsed, load_artifact, model_from_artifact
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import quantize_state
from pgolf.quant.gptq import gptq, relative_output_error
from pgolf.quant.hessian import HessianAccumulator, collect_hessians
from pgolf.quant.rtn import qmax_for_bits, rtn, std_scale
from pgolf.quant.salient_fit import choose_blocks, column_saliency, multipliers, split
from pgolf.quant.scheme import QuantizedTensor

torch.set_num_threads(1)
ROWS, COLS = 16, 32
TINY = {"vocab_size": 64, "layers": 2, "width": 32, "heads": 2, "kv_heads": 1}


def weights(seed: int) -> torch.Tensor:
    return torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(seed))


def correlated_hessian(seed: int, samples: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(COLS, COLS, generator=g) * torch.linspace(0.1, 3.0, COLS)
    acc = HessianAccumulator(COLS)
    acc.add_batch(torch.randn(samples, COLS, generator=g) @ mix)
    return acc.h.float()


def test_blocks_are_aligned_and_ranked_by_summed_saliency():
    saliency = torch.tensor([1.0, 1.0, 0.0, 0.0, 5.0, 0.0, 0.0, 3.0, 9.0])  # last column: no whole block
    assert choose_blocks(saliency, 2, 1).tolist() == [4]
    assert choose_blocks(saliency, 2, 2).tolist() == [4, 6]  # block sums 2, 0, 5, 3; starts ascending
    assert choose_blocks(saliency, 2, 3).tolist() == [0, 4, 6]
    assert choose_blocks(saliency, 2, 99).tolist() == [0, 2, 4, 6]
    assert choose_blocks(saliency, 16, 1).numel() == 0


def test_saliency_is_activation_energy_times_weight_energy():
    w = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    h = torch.tensor([[4.0, 1.0], [1.0, 0.5]])
    assert column_saliency(w, h).tolist() == [4.0 * 5.0, 0.5 * 2.0]


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 7), extra=st.integers(1, 6), seed=st.integers(0, 2**16), width=st.sampled_from([1, 4, 8]))
def test_split_recombines_to_the_fine_grid(bits, extra, seed, width):
    shift = min(extra, 8 - bits)
    maxq = qmax_for_bits(bits)
    w = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(seed)) * 3
    scale = std_scale(w, 6.0, maxq)
    starts = torch.tensor([0, COLS - width])
    mult = multipliers(COLS, starts, width, shift)
    q_fine = rtn(w, scale, maxq, mult)
    q, extras = split(q_fine, starts, width, shift)
    assert int(q.abs().max()) <= maxq and q.dtype == torch.int8
    fine = extras["salient.fine"]
    assert float(fine.min()) >= -(2 ** (shift - 1)) and float(fine.max()) <= 2 ** (shift - 1) - 1
    cols = torch.cat([torch.arange(width), torch.arange(COLS - width, COLS)])
    assert torch.equal(q[:, cols].long() * 2**shift + fine.long(), q_fine[:, cols].long())
    others = torch.ones(COLS, dtype=torch.bool)
    others[cols] = False
    assert torch.equal(q[:, others], q_fine[:, others])
    qt = QuantizedTensor("w", "mlp", bits, q, scale.squeeze(1).half(), "float32", extras)
    qt.check()
    assert torch.allclose(qt.dequantize(), q_fine.float() * scale / mult.float(), rtol=0, atol=1e-5)


def test_gptq_with_unit_multipliers_is_unchanged_bit_for_bit():
    w, h = weights(0), correlated_hessian(0)
    scale = std_scale(w, 12.0, 31)
    assert torch.equal(gptq(w, h, scale, 31, block_size=8), gptq(w, h, scale, 31, block_size=8, mult=torch.ones(COLS, dtype=torch.long)))


def test_gptq_with_identity_hessian_and_multipliers_equals_rtn_on_the_same_grid():
    w = weights(1)
    scale = std_scale(w, 6.0, 7)
    mult = multipliers(COLS, torch.tensor([8]), 8, 3)
    assert torch.equal(gptq(w, torch.eye(COLS), scale, 7, block_size=8, mult=mult), rtn(w, scale, 7, mult))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_salient_block_beats_plain_gptq_at_the_same_bits(seed):
    w, h = weights(seed), correlated_hessian(seed)
    state = {"blocks.0.mlp.fc.weight": w}
    hessians = {"blocks.0.mlp.fc.weight": h}
    plain = quantize_state(state, hessians, QuantizeParams(min_numel=1, mlp={"bits": 4, "k": 6.0}), {}).quantized["blocks.0.mlp.fc.weight"]
    mixed_params = QuantizeParams(min_numel=1, mlp={"bits": 4, "k": 6.0, "salient": 8}, salient_bits=8)
    mixed = quantize_state(state, hessians, mixed_params, {}).quantized["blocks.0.mlp.fc.weight"]
    assert plain.extras == {} and set(mixed.extras) == {"salient.fine", "salient.start", "salient.shift"}
    assert mixed.bits == plain.bits == 4
    assert relative_output_error(w, mixed.dequantize(), h) < relative_output_error(w, plain.dequantize(), h)


def test_salient_is_off_by_default_per_group_and_skips_groups_already_at_its_bits():
    w, h = weights(3), correlated_hessian(3)
    state = {"blocks.0.mlp.fc.weight": w, "blocks.0.attn.c_q.weight": weights(5), "tok_emb.weight": weights(4)}
    hessians = dict.fromkeys(state, h)
    assert all(qt.extras == {} for qt in quantize_state(state, hessians, QuantizeParams(min_numel=1), {}).quantized.values())
    params = QuantizeParams(min_numel=1, salient_bits=7, mlp={"bits": 6, "k": 12.0, "salient": 8}, embedding={"bits": 7, "k": 12.0, "salient": 8})
    on = quantize_state(state, hessians, params, {}).quantized
    assert on["blocks.0.mlp.fc.weight"].extras["salient.shift"].tolist() == [1.0]
    assert not on["blocks.0.attn.c_q.weight"].extras  # attention: salient 0
    assert not on["tok_emb.weight"].extras  # embedding: int7 already


@pytest.mark.parametrize("extras, match", [
    ({"salient.fine": torch.zeros(16, 4), "salient.start": torch.tensor([6.0]), "salient.shift": torch.tensor([2.0])}, "leave"),
    ({"salient.fine": torch.zeros(16, 8), "salient.start": torch.tensor([0.0, 2.0]), "salient.shift": torch.tensor([2.0])}, "overlap"),
    ({"salient.fine": torch.full((16, 4), 2.0), "salient.start": torch.tensor([0.0]), "salient.shift": torch.tensor([2.0])}, "integers in"),
    ({"salient.fine": torch.full((16, 4), 0.5), "salient.start": torch.tensor([0.0]), "salient.shift": torch.tensor([2.0])}, "integers in"),
    ({"salient.fine": torch.zeros(16, 4), "salient.start": torch.tensor([0.5]), "salient.shift": torch.tensor([2.0])}, "integer first"),
    ({"salient.fine": torch.zeros(16, 4), "salient.start": torch.tensor([0.0]), "salient.shift": torch.tensor([9.0])}, "shift"),
    ({"salient.fine": torch.zeros(15, 4), "salient.start": torch.tensor([0.0]), "salient.shift": torch.tensor([2.0])}, "rows"),
    ({"salient.fine": torch.zeros(16, 4), "salient.start": torch.tensor([0.0])}, "needs parts"),
])
def test_malformed_salient_extras_are_artifact_errors(extras, match):
    qt = QuantizedTensor("w", "mlp", 4, torch.zeros(16, 8, dtype=torch.int8), torch.ones(16).half(), "float32", extras)
    with pytest.raises(ArtifactError, match=match):
        qt.check()


def tiny_model_and_hessians():
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hs = collect_hessians(model, [torch.randint(0, 64, (2, 16)) for _ in range(3)])
    return model, {name: hs.hessians[group] for name, group in hs.layers.items()}


def test_loaded_artifact_applies_the_salient_blocks(tmp_path):
    model, hessians = tiny_model_and_hessians()
    config = model.config.model_dump(mode="json")
    params = QuantizeParams(min_numel=256, salient_bits=8, **{g: {"bits": b, "k": 12.0, "salient": 8} for g, b in (("attention", 6), ("mlp", 6), ("embedding", 7))})
    qm = quantize_state(model.state_dict(), hessians, params, config)
    assert sum("salient.fine" in qt.extras for qt in qm.quantized.values()) == len(hessians)
    packed = pack_model(qm, PackParams())
    assert sum(g["extras_bytes"] for g in packed.groups.values()) > 0
    plain = pack_model(quantize_state(model.state_dict(), hessians, QuantizeParams(min_numel=256), config), PackParams())
    assert packed.bytes_model > plain.bytes_model  # the refinements are stored and counted
    loaded = model_from_artifact(artifact_from_parsed(parse_artifact(packed.data)), "test")
    reference = build_model(config)
    reference.load_state_dict(qm.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx), reference.eval()(idx))
    bad = {name: qt for name, qt in qm.quantized.items()}
    name = next(n for n, qt in bad.items() if "salient.start" in qt.extras)
    bad[name] = QuantizedTensor(name, bad[name].group, bad[name].bits, bad[name].q, bad[name].scale, bad[name].dtype,
                                {**bad[name].extras, "salient.start": bad[name].extras["salient.start"] + 10_000})
    path = tmp_path / "bad.pgolf"
    path.write_bytes(pack_model(type(qm)(qm.model_config, bad, qm.passthrough, qm.dtypes, qm.aliases), PackParams()).data)
    with pytest.raises(ArtifactError, match=rf"^{path}: tensor {name}: extra salient: blocks"):
        load_artifact(path)
