"""Per-group clip rules: the records' SDClip, scale = k * std(row) / qmax with k per tensor group.

Pinned against the records' formula (parameter-golf PR #1394 lineage, the 2026-04-29 record's
gptq_quantize_weight): ``s = (k * W.std(dim=1) / clip_range).to(float16)``, torch's default
(Bessel-corrected) std, one k per group: attention 13.0, MLP 11.5, embedding 14 at int7, other
matrices 12.85.
"""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pgolf.config.quantize import QuantizeParams
from pgolf.quant.apply import quantize_state
from pgolf.quant.groups import tensor_group
from pgolf.quant.rtn import qmax_for_bits, std_scale

RECORD = {"attention": {"bits": 6, "k": 13.0}, "mlp": {"bits": 6, "k": 11.5}, "embedding": {"bits": 7, "k": 14.0}, "other": {"bits": 6, "k": 12.85}}


def record_sdclip(w: torch.Tensor, k: float, bits: int) -> torch.Tensor:
    """The records' scale, written as they write it."""
    clip_range = 2 ** (bits - 1) - 1
    return (k * w.float().std(dim=1) / clip_range).clamp_min(1e-10).to(torch.float16)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(2, 40), k=st.floats(1.0, 30.0), bits=st.integers(2, 8), seed=st.integers(0, 2**16), spread=st.floats(1e-3, 10.0))
def test_std_scale_is_the_records_sdclip(rows, cols, k, bits, seed, spread):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * spread
    theirs = record_sdclip(w, k, bits)
    assume(bool((theirs > 0).all()))  # the records' 1e-10 floor rounds to a zero scale; ours stays positive
    assert torch.equal(std_scale(w, k, qmax_for_bits(bits)).squeeze(1).half(), theirs)


def test_bessel_correction_is_what_makes_it_match():
    w = torch.tensor([[1.0, -1.0, 3.0, 0.0]])
    population = w.std(dim=1, correction=0) * 12.0 / 31
    assert float(std_scale(w, 12.0, 31)) != float(population.half())
    assert float(std_scale(w, 12.0, 31)) == float(record_sdclip(w, 12.0, 6))


def test_each_group_takes_its_own_k_and_bits():
    names = {
        "blocks.0.attn.c_q.weight": "attention",
        "blocks.0.attn.proj.weight": "attention",
        "blocks.0.mlp.fc.weight": "mlp",
        "blocks.0.mlp.proj.weight": "mlp",
        "tok_emb.weight": "embedding",
        "bigram.proj.weight": "other",
    }
    g = torch.Generator().manual_seed(0)
    state = {name: torch.randn(8, 64, generator=g) * (i + 1) for i, name in enumerate(names)}
    qm = quantize_state(state, {}, QuantizeParams(method="rtn", min_numel=64, **RECORD), {})
    for name, group in names.items():
        assert tensor_group(name) == group
        qt = qm.quantized[name]
        spec = RECORD[group]
        assert qt.bits == spec["bits"]
        assert torch.equal(qt.scale, record_sdclip(state[name], spec["k"], spec["bits"])), name
