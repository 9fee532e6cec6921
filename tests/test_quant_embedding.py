"""GPTQ for the tied embedding / output head: its Hessian is H = sum x x^T of the final norm's
output (the head's input), collected when calibrate.head_hessian is on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.config.calibrate import CalibrateParams
from pgolf.config.quantize import QuantizeParams
from pgolf.data.shards import read_shard, write_shard
from pgolf.model import build_model
from pgolf.quant.apply import quantize_state
from pgolf.quant.calibrate import calibrate_hessians, head_input, sample_batches
from pgolf.quant.hessian import collect_hessians

torch.set_num_threads(1)
TINY = {"vocab_size": 64, "layers": 2, "width": 32, "heads": 2, "kv_heads": 1}
PARAMS = CalibrateParams(batches=4, batch_seqs=2, seq_len=16, seed=1)


def tiny_model(tied: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(TINY | {"tied_embeddings": tied})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture()
def train_shard(tmp_path: Path) -> Path:
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, np.random.default_rng(0).integers(0, 64, 4000))
    return path


def proxy(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W - W_hat) H (W - W_hat)^T)."""
    e = (w - w_hat).double()
    return float(torch.einsum("ij,jk,ik->", e, h.double(), e))


def test_the_head_input_is_the_final_norm_for_a_tied_head_only():
    tied = tiny_model()
    assert head_input(tied) == {"tok_emb.weight": tied.final_norm}
    assert head_input(tiny_model(tied=False)) == {}  # lm_head is an nn.Linear: hooked like the others


def test_head_hessian_is_the_sum_over_final_norm_outputs(train_shard):
    model = tiny_model()
    hs = calibrate_hessians(model, [train_shard], PARAMS.model_copy(update={"head_hessian": True}))
    seen: list[torch.Tensor] = []
    handle = model.final_norm.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().reshape(-1, 32)))
    with torch.no_grad():
        for batch in sample_batches([read_shard(train_shard)], PARAMS):
            model(batch)
    handle.remove()
    x = torch.cat(seen).double()
    assert torch.allclose(hs.for_weight("tok_emb.weight").double(), x.T @ x, rtol=1e-4, atol=1e-4)
    without = calibrate_hessians(model, [train_shard], PARAMS)
    assert "tok_emb.weight" not in without.layers
    assert {k: v for k, v in hs.layers.items() if k != "tok_emb.weight"} == without.layers
    for name in without.hessians:
        assert torch.equal(hs.hessians[name], without.hessians[name])


@pytest.mark.parametrize("seed", [0, 1])
def test_embedding_gptq_beats_round_to_nearest_on_the_proxy(train_shard, seed):
    model = tiny_model(seed=seed)
    hs = calibrate_hessians(model, [train_shard], PARAMS.model_copy(update={"head_hessian": True}))
    hessians = {name: hs.hessians[group] for name, group in hs.layers.items()}
    without = {name: h for name, h in hessians.items() if name != "tok_emb.weight"}
    params = QuantizeParams(min_numel=256, embedding={"bits": 4, "k": 12.0})
    state = model.state_dict()
    gptq = quantize_state(state, hessians, params, {})
    rtn = quantize_state(state, without, params, {})
    rows = {row["name"]: row for row in gptq.report}
    assert rows["tok_emb.weight"]["method"] == "gptq"
    assert {row["name"]: row for row in rtn.report}["tok_emb.weight"]["method"] == "rtn"
    w, h = state["tok_emb.weight"], hessians["tok_emb.weight"]
    ours = proxy(w, gptq.quantized["tok_emb.weight"].dequantize(), h)
    baseline = proxy(w, rtn.quantized["tok_emb.weight"].dequantize(), h)
    assert ours < 0.9 * baseline
    assert rows["tok_emb.weight"]["rel_output_err"] < rows["tok_emb.weight"]["rel_output_err_rtn"]


def test_collect_hessians_without_outputs_is_unchanged():
    model = tiny_model()
    batches = [torch.randint(0, 64, (2, 16)) for _ in range(2)]
    plain = collect_hessians(model, batches)
    with_head = collect_hessians(model, batches, {"tok_emb.weight": model.final_norm})
    assert set(with_head.layers) == set(plain.layers) | {"tok_emb.weight"}
    assert with_head.layers["tok_emb.weight"] == "tok_emb.weight"
