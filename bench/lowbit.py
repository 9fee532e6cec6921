"""Issue 15 items 4/5 on the default run's checkpoint: Q^2 mixes of 2/4/6/8-bit midrise grids with
per-group scales against int6 GPTQ at equal bytes, and the bits per ternary weight of base-3 packing.

Q^2 rows: every group on the midrise grid (2 bits = {-3,-1,1,3} s/2), one scale per `--scale-group`
columns (clip search per group), GPTQ with the calibrate stage's Hessians; the mix is fitted by
`pgolf.quant.ratedistortion` (the quantize stage's `fit_to_budget`) with fit_bits [2, 4, 6, 8] to
the int6 row's model bytes, minimising the proxy with the calibrated fit weights of the default run
(params.yaml's comment: attention 0.0195, mlp 0.0757, embedding 6.44, other 0, lookup 0.603); a
few fixed mixes are listed beside it. Each row: model bytes as `pack` codes it (params.yaml's pack,
with pack.transform bits too; `--compressor`, default ans), the proxy, and the real sliding val_bpb gap on the first `--tokens`
validation tokens (the model rebuilt from the artifact bytes). The ternary part ternarizes (group
128) Gaussian weights and the checkpoint's block matrices (no ternary-trained checkpoint exists
yet) and codes them as one stream: raw trits -> base-3 bytes -> each coder.

    python bench/lowbit.py [--checkpoint data/train/checkpoint] [--calibrate data/calibrate] [--tokens 65536]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pgolf.config.quantize import FitWeights, GroupQuant, QuantizeParams
from pgolf.config.sections import load_section
from pgolf.eval.bpb import ValStream
from pgolf.eval.methods import METHODS
from pgolf.model.checkpoint import load_model, read_checkpoint_json
from pgolf.model.ternary import ternarize
from pgolf.pack.artifact import parse_artifact
from pgolf.pack.code_bytes import measure_code_bytes
from pgolf.pack.load import artifact_from_parsed, model_from_artifact
from pgolf.pack.pack import pack_model, stream_candidates
from pgolf.quant.apply import QuantizedModel, quantize_state
from pgolf.quant.calibrate import load_hessians
from pgolf.quant.groups import GROUPS
from pgolf.quant.ratedistortion import Packer, distortion, matrices, proxy
from pgolf.quant.scheme import QuantizedTensor
from pgolf.quant.stage import fit_to_budget
from pgolf.runtime import load_val_stream

CALIBRATED = FitWeights(attention=0.0195, mlp=0.0757, embedding=6.44, other=0.0, embedding_lookup=0.603)
MIXES = [(2, 4, 8), (4, 4, 8)]  # (attention, mlp, embedding) bits; other 8
LIMIT, RECORD_TERNARY, RECORD_REST = 16_000_000, 64.9e6, 2.5e6  # record #640: 64.9 M ternary + 2.5 MB fp8 rest


def q2(base: QuantizeParams, bits: dict[str, int], scale_group: int) -> QuantizeParams:
    groups = {g: GroupQuant(bits=bits[g], k=getattr(base, g).k, grid="midrise", scale_group=scale_group) for g in GROUPS}
    return base.model_copy(update={**groups, "scale": "clip_search", "fit_bits": [2, 4, 6, 8], "fit_weights": CALIBRATED})


def ternary_bits(q: torch.Tensor, pack) -> dict[str, float]:
    """Bits per trit of one [rows, cols] trit matrix coded as one stream, raw, base 3, base 3 + each coder."""
    qt = QuantizedTensor("t", "mlp", 2, q, torch.ones(q.shape[0]).half(), "float32")
    holder = QuantizedModel({}, {"t": qt}, {}, {"t": "float32"})
    out = {}
    for transform in ("none", "trits"):
        for coder in ("raw", "ans", "lzma", "brotli"):
            blob = stream_candidates(holder, ["t"], pack.model_copy(update={"transform": transform, "compressor": coder}), {})[1][coder]
            out[f"{transform}/{coder}"] = 8 * len(blob) / q.numel()
    counts = np.bincount(q.numpy().ravel().astype(np.int64) + 1, minlength=3) / q.numel()
    out["entropy"] = float(-(counts[counts > 0] * np.log2(counts[counts > 0])).sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("data/train/checkpoint"))
    parser.add_argument("--calibrate", type=Path, default=Path("data/calibrate"))
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.model"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tokens", type=int, default=8192, help="validation tokens scored per row")
    parser.add_argument("--compressor", default="ans", help="pack.compressor of every row (ans: the stage's default best minus its slow LZ tries)")
    parser.add_argument("--scale-group", type=int, default=64)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # GPTQ on small matrices runs fastest on 1 thread
    base: QuantizeParams = load_section("quantize", args.params)
    pack = load_section("pack", args.params).model_copy(update={"reference_brotli": False, "compressor": args.compressor})
    eval_params = load_section("eval_sliding", args.params)
    model_config = read_checkpoint_json(args.checkpoint)["model_config"]
    model = load_model(args.checkpoint).eval()
    state = model.state_dict()
    hs = load_hessians(args.calibrate)
    hessians = {name: hs.hessians[group] for name, group in hs.layers.items()}
    full = load_val_stream(args.shards, args.tokenizer)
    n = min(args.tokens, full.tokens.size)
    stream = ValStream(full.tokens[:n], full.target_bytes[:n], full.bos_id)
    checkpoint_bpb = METHODS["sliding"].gap_score(model, stream, eval_params)
    mats = matrices(state, hessians, base)

    def row(name: str, qm: QuantizedModel) -> dict:
        packed = pack_model(qm, pack)
        bits_bytes = pack_model(qm, pack.model_copy(update={"transform": "bits"})).bytes_model
        loaded = model_from_artifact(artifact_from_parsed(parse_artifact(packed.data)), "bench")
        gap = METHODS["sliding"].gap_score(loaded, stream, eval_params) - checkpoint_bpb
        setting = " ".join(f"{g[:3]} {qt.bits}" for g, qt in {qt.group: qt for qt in qm.quantized.values()}.items())
        out = {"name": name, "setting": setting, "bytes": packed.bytes_model, "bytes_bits": bits_bytes, "proxy": proxy(distortion(qm.quantized, mats), CALIBRATED), "gap": gap}
        print(f"{name:34s} {setting:32s} bytes {out['bytes']:>8,d} (bits transform {bits_bytes:>8,d})  proxy {out['proxy']:.5f}  gap {gap:+.4f}  [{time.perf_counter() - started:.0f} s]", flush=True)
        return out

    int6 = base.model_copy(update={g: getattr(base, g).model_copy(update={"bits": 6}) for g in GROUPS})
    rows = [row("int6 GPTQ", quantize_state(state, hessians, int6, model_config))]
    target = rows[-1]["bytes"]
    fit = fit_to_budget(Packer(state, hessians, model_config, pack), q2(base, {g: 6 for g in GROUPS}, args.scale_group), target)
    rows.append(row("Q^2 mix fitted to int6's bytes", fit.model))
    for a, m, e in MIXES:
        rows.append(row(f"Q^2 fixed mix", quantize_state(state, hessians, q2(base, {"attention": a, "mlp": m, "embedding": e, "other": 8}, args.scale_group), model_config)))
    print(f"\ncheckpoint sliding val_bpb on {n} tokens: {checkpoint_bpb:.4f}; Q^2: midrise grid, scale per {args.scale_group} columns, clip search, GPTQ")
    print("| quantization | bits per group | bytes_model | with pack.transform bits | proxy | gap (bpb) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['setting']} | {r['bytes']:,d} | {r['bytes_bits']:,d} | {r['proxy']:.5f} | {r['gap']:+.4f} |")

    gen = torch.Generator().manual_seed(0)
    sources = {"Gaussian 1024x4096": torch.randn(1024, 4096, generator=gen)}
    sources |= {"checkpoint block matrices": torch.cat([w.float().reshape(-1, 128) for n_, w in state.items() if n_.endswith(("mlp.fc.weight", "mlp.proj.weight", "attn.proj.weight")) and w.shape[1] % 128 == 0])}
    print("\n| trits of | entropy | int8 raw | ans on trits | base-3 raw | base-3 + lzma | base-3 + brotli | base-3 + ans | + fp16 scale per 128 |\n|---|---|---|---|---|---|---|---|---|")
    best = None
    for label, w in sources.items():
        b = ternary_bits(ternarize(w, 128)[0], pack)
        coded = min(b["trits/lzma"], b["trits/brotli"], b["trits/ans"], b["none/ans"])
        best = coded if best is None else best
        print(f"| {label} | {b['entropy']:.3f} | {b['none/raw']:.2f} | {b['none/ans']:.3f} | {b['trits/raw']:.3f} | {b['trits/lzma']:.3f} | {b['trits/brotli']:.3f} | {b['trits/ans']:.3f} | {coded + 16 / 128:.3f} |")
    code = measure_code_bytes(pack.code_modules, ".").bytes_code
    for label, bpw in (("base-3 raw", 1.6 + 16 / 128), ("base-3 + coder (Gaussian)", best + 16 / 128)):
        fits = (LIMIT - code - RECORD_REST) * 8 / bpw
        print(f"ternary params fitting 16,000,000 bytes at {bpw:.3f} bits/weight (+ the record's 2.5 MB 8-bit rest + our code {code:,d} B): {fits / 1e6:.1f} M (record #640: {RECORD_TERNARY / 1e6:.1f} M)")
    print(f"[{time.perf_counter() - started:.0f} s]")


if __name__ == "__main__":
    main()
