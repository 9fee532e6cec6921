"""The quantized-tensor scheme with an extra: a low-rank correction fitted, stored, packed, loaded
and dequantized by the one shared rule; malformed extras are ArtifactErrors."""

from __future__ import annotations

import json

import pytest
import torch

from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.errors import ArtifactError
from pgolf.model import build_model
from pgolf.pack.artifact import encode_artifact, parse_artifact
from pgolf.pack.load import artifact_from_parsed
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import quantize_state
from pgolf.quant.lowrank_fit import fit_lowrank
from pgolf.quant.rtn import qmax_for_bits, rtn, std_scale
from pgolf.quant.scheme import QuantizedTensor
from pgolf.quant.store import load_quantized, save_quantized

TINY = {"vocab_size": 64, "layers": 2, "width": 32, "heads": 2, "kv_heads": 1}


def test_fit_lowrank_is_the_truncated_svd():
    g = torch.Generator().manual_seed(0)
    residual = torch.randn(16, 12, generator=g)
    parts = fit_lowrank(residual, 3)
    assert parts["lowrank.u"].shape == (16, 3) and parts["lowrank.v"].shape == (3, 12)
    approx = parts["lowrank.u"].float() @ parts["lowrank.v"].float()
    s = torch.linalg.svdvals(residual.double())
    best = float((s[3:] ** 2).sum())  # Eckart-Young: the optimal rank-3 error
    assert abs(float(((residual - approx) ** 2).sum()) - best) < 1e-2 * float((s**2).sum())
    assert fit_lowrank(residual, 99)["lowrank.u"].shape == (16, 12)  # rank capped at min(rows, cols)


def test_dequantize_adds_the_correction_once():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 32, generator=g)
    scale = std_scale(w, 12.0, qmax_for_bits(4))
    q = rtn(w, scale, qmax_for_bits(4))
    plain = QuantizedTensor("w", "mlp", 4, q, scale.squeeze(1).half(), "float32")
    base = plain.dequantize()
    extras = fit_lowrank(w - base, 4)
    corrected = QuantizedTensor("w", "mlp", 4, q, scale.squeeze(1).half(), "float32", extras)
    corrected.check()
    expected = base + extras["lowrank.u"].float() @ extras["lowrank.v"].float()
    assert torch.equal(corrected.dequantize(), expected)
    assert float(((w - corrected.dequantize()) ** 2).sum()) < float(((w - base) ** 2).sum())


@pytest.mark.parametrize("extras, match", [
    ({"lowrank.u": torch.zeros(16, 2)}, "needs parts"),
    ({"nosuch.u": torch.zeros(16, 2)}, "unknown extra"),
    ({"lowrank": torch.zeros(16, 2)}, "term"),
    ({"lowrank.u": torch.zeros(16, 2), "lowrank.v": torch.full((2, 8), float("nan"))}, "finite"),
])
def test_malformed_extras_are_artifact_errors(extras, match):
    qt = QuantizedTensor("w", "mlp", 4, torch.zeros(16, 8, dtype=torch.int8), torch.ones(16).half(), "float32", extras)
    with pytest.raises(ArtifactError, match=match):
        qt.check()


def test_lowrank_round_trips_through_store_pack_and_loader(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY)
    state = model.state_dict()
    params = QuantizeParams(method="rtn", lowrank_rank=2, min_numel=256, attention={"bits": 4, "k": 12.0}, mlp={"bits": 4, "k": 12.0})
    qm = quantize_state(state, {}, params, model.config.model_dump(mode="json"))
    assert all(set(qt.extras) == {"lowrank.u", "lowrank.v"} for qt in qm.quantized.values())
    save_quantized(qm, tmp_path)
    stored = load_quantized(tmp_path)
    packed = pack_model(stored, PackParams(compressor="ans"))
    artifact = artifact_from_parsed(parse_artifact(packed.data))
    expected = qm.state_dict()
    assert set(artifact.tensors) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(artifact.tensors[name], tensor), name
    assert any(g["extras_bytes"] > 0 for g in packed.groups.values())
    # Without the correction the rebuilt weights differ: the extras are really applied.
    plain = quantize_state(state, {}, params.model_copy(update={"lowrank_rank": 0}), model.config.model_dump(mode="json"))
    name = next(iter(qm.quantized))
    assert not torch.equal(plain.state_dict()[name], expected[name])


def test_container_rejects_an_extra_without_its_q_tensor():
    streams = [{"coder": "raw"}]
    entries = [{"name": "w", "role": "extra", "part": "lowrank.u", "shape": [2], "dtype": "float16", "out_dtype": "float32", "stream": 0}]
    with pytest.raises(ArtifactError, match="without a q tensor"):
        encode_artifact(TINY, {}, {}, streams, entries, [b"\x00" * 4])
    entries[0].update(role="plain")
    with pytest.raises(ArtifactError, match="part"):
        encode_artifact(TINY, {}, {}, streams, entries, [b"\x00" * 4])
    json.dumps(entries)  # entries stay plain JSON data
