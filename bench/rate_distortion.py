"""The fit to a byte budget (quantize.target_bytes, issue 19) against the default quantization, at
the default's own bytes_total, on a trained checkpoint: real sliding-window quantization gaps.

Everything in memory (nothing is written under data/ or metrics/): the checkpoint's sliding
val_bpb, then the proxy's weights calibrated on the real gaps of the configured settings and
their one-bit neighbours (`ratedistortion.calibrate_proxy`; the head-Hessian points use Hessians
with the head's, collected here as the calibrate stage does with calibrate.head_hessian), then
fits at the default's bytes_total: uncalibrated weights (1 each), calibrated weights with the
Hessians of the default pipeline (embedding round-to-nearest), and calibrated weights with the
head Hessian (embedding GPTQ). Each fitted model is packed with the real tokenizer hash and
bytes_code, rebuilt from the artifact bytes and scored as the eval stage scores it.

    python bench/rate_distortion.py [--checkpoint data/train/checkpoint] [--calibrate data/calibrate]
        [--shards data/shards] [--tokenizer data/tokenizer/tokenizer.model] [--skip-uncalibrated] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from pgolf.config.calibrate import CalibrateParams
from pgolf.config.sections import load_section
from pgolf.model.checkpoint import load_model, read_train_param
from pgolf import rd as rd_cli
from pgolf.quant import ratedistortion as rd
from pgolf.quant.calibrate import calibrate_hessians, load_hessians
from pgolf.quant.stage import fit_to_budget


def head_hessians(checkpoint: Path, shards: Path, params: str) -> dict[str, torch.Tensor]:
    """Every Hessian of the calibrate stage plus the tied head's (calibrate.head_hessian)."""
    cal: CalibrateParams = load_section("calibrate", params)
    if cal.seq_len is None:
        cal = cal.model_copy(update={"seq_len": read_train_param(checkpoint, "seq_len")})
    hs = calibrate_hessians(load_model(checkpoint), [sorted(shards.glob("fineweb_train_*.bin"))[0]], cal.model_copy(update={"head_hessian": True}))
    return {w: hs.hessians[g] for w, g in hs.layers.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("data/train/checkpoint"))
    parser.add_argument("--calibrate", type=Path, default=Path("data/calibrate"), help="the default pipeline's Hessians")
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.model"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--skip-uncalibrated", action="store_true", help="skip the fit with every weight 1")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # GPTQ on these small matrices: one thread is many times faster on a shared machine
    started = time.perf_counter()

    hs = load_hessians(args.calibrate)
    plain = {w: hs.hessians[g] for w, g in hs.layers.items()}
    packer, params, gap, base_bpb = rd_cli.setup(args.checkpoint, args.calibrate, args.shards, args.tokenizer, args.params, plain)
    print(f"checkpoint sliding val_bpb {base_bpb:.6f}; bytes_code {packer.code_bytes:,d} ({time.perf_counter() - started:.0f} s)", flush=True)
    with_head = replace(packer, hessians=head_hessians(args.checkpoint, args.shards, args.params), done={})
    weights, rms, calibration = rd.calibrate_proxy(with_head, params, gap)
    default_gap = calibration[0][1]  # the first design point is the configured settings, without the head Hessian
    qm0, target = packer(params)
    print(f"calibrated weights ({len(calibration)} points, RMS {rms:.5f} bpb): " + ", ".join(f"{k} {v:.4g}" for k, v in weights.model_dump().items()), flush=True)
    rows = [{"quantization": "defaults (params.yaml)", "bytes_total": target, "gap": default_gap, "gap_predicted": rd.proxy(rd.distortion(qm0.quantized, rd.matrices(packer.state, with_head.hessians, params)), weights),
             "settings": rd.describe(params, rd.distortion(qm0.quantized, rd.matrices(packer.state, plain, params)))}]
    fits = [("fit, calibrated weights", packer, weights), ("fit, calibrated weights, head Hessian (embedding GPTQ)", with_head, weights)]
    if not args.skip_uncalibrated:
        fits.insert(0, ("fit, uncalibrated weights (1 each)", packer, params.fit_weights))
    mats = rd.matrices(packer.state, with_head.hessians, params)
    for name, who, w in fits:
        t = time.perf_counter()
        fit = fit_to_budget(replace(who, done={}), params, target, w)
        rows.append({"quantization": name, "bytes_total": fit.bytes_total, "gap": gap(fit.model), "gap_predicted": rd.proxy(rd.distortion(fit.model.quantized, mats), weights),
                     "settings": rd.describe(fit.params, fit.distortion), "fit_seconds": time.perf_counter() - t, "packs": fit.packs})
        print(f"{name}: gap {rows[-1]['gap']:+.5f} at {fit.bytes_total:,d} bytes ({rows[-1]['fit_seconds']:.0f} s, {fit.packs} packs) {rows[-1]['settings']}", flush=True)
    print()
    print(f"checkpoint sliding val_bpb {base_bpb:.5f}; target = the defaults' bytes_total {target:,d}")
    print("| quantization | bytes_total | sliding val_bpb | gap (bpb) | vs defaults | predicted gap | bits/k per group |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['quantization']} | {row['bytes_total']:,d} | {base_bpb + row['gap']:.5f} | {row['gap']:+.5f} | {row['gap'] - default_gap:+.5f} | {row['gap_predicted']:+.5f} | {row['settings']} |")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint_bpb": base_bpb, "weights": weights.model_dump(), "calibration_rms_bpb": rms, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
