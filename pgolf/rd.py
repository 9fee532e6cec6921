"""`pgolf rd`: the rate-distortion curve of a checkpoint's quantization settings (bpb vs bytes, one
line per method), its proxy calibrated against real sliding-window gaps (issue 19). The numerics
are `pgolf.quant.ratedistortion`; this module joins them to the checkpoint, the Hessians, the
artifact runtime and the evaluation (kept out of the quantize stage's imports).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.io import write_json_atomic
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import QuantizedModel
from pgolf.quant.ratedistortion import RD_METHODS, Packer, sweep


def setup(checkpoint: str | Path, calibrate: str | Path, shards: str | Path, tokenizer: str | Path, params_path: str | Path = "params.yaml",
          hessians: dict[str, torch.Tensor] | None = None) -> tuple[Packer, QuantizeParams, Callable[[QuantizedModel], float], float]:
    """(packer with the real tokenizer hash and bytes_code, quantize params, the real sliding-window
    gap of a quantized model as the artifact rebuilds it, the checkpoint's sliding val_bpb)."""
    from pgolf.bytetable import tokenizer_sha256
    from pgolf.config.base import read_params_file, validate_section
    from pgolf.config.eval import EvalSlidingParams
    from pgolf.eval.methods import METHODS
    from pgolf.model.checkpoint import load_model, read_checkpoint_json
    from pgolf.pack.artifact import parse_artifact
    from pgolf.pack.code_bytes import measure_code_bytes
    from pgolf.pack.load import artifact_from_parsed, model_from_artifact
    from pgolf.quant.calibrate import load_hessians
    from pgolf.runtime import load_val_stream

    raw = read_params_file(params_path)
    params, pack, evals = (validate_section(m, raw.get(s), s) for s, m in (("quantize", QuantizeParams), ("pack", PackParams), ("eval_sliding", EvalSlidingParams)))
    model = load_model(checkpoint)
    if hessians is None:
        hs = load_hessians(calibrate)
        hessians = {n: hs.hessians[g] for n, g in hs.layers.items()}
    meta = {"tokenizer_sha256": tokenizer_sha256(tokenizer)}
    code = measure_code_bytes(pack.code_modules, ".").bytes_code
    packer = Packer(model.state_dict(), hessians, read_checkpoint_json(checkpoint)["model_config"], pack, code, meta)
    stream = load_val_stream(shards, tokenizer)
    base_bpb = METHODS["sliding"].gap_score(model.eval(), stream, evals)

    def gap(qm: QuantizedModel) -> float:
        loaded = model_from_artifact(artifact_from_parsed(parse_artifact(pack_model(qm, pack, meta).data)), "rd")
        return METHODS["sliding"].evaluate(loaded, stream, evals).gap_bpb - base_bpb

    return packer, params, gap, base_bpb


def _rd(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    packer, params, gap, base_bpb = setup(args.checkpoint, args.calibrate, args.shards, args.tokenizer, args.params)
    result = sweep(packer, params, gap, args.method or list(RD_METHODS), args.points, (args.span[0], args.span[1]), args.evaluate)
    rows = [{"method": r["method"], "bytes_total": r["bytes_total"], "bytes_model": r["bytes_model"], "val_bpb_predicted": base_bpb + r["gap_predicted"],
             "val_bpb": None if r["gap"] is None else base_bpb + r["gap"], "settings": r["settings"]} for r in result["rows"]]
    write_json_atomic(args.out, rows)
    if args.summary:
        write_json_atomic(args.summary, result | {"checkpoint_bpb": base_bpb})
    print(f"checkpoint sliding val_bpb {base_bpb:.5f}; calibrated quantize.fit_weights (RMS {result['calibration_rms_bpb']:.5f} bpb):")
    print(", ".join(f"{k}: {v:.6g}" for k, v in result["weights"].items()))
    for row in rows:
        real = "" if row["val_bpb"] is None else f"  measured {row['val_bpb']:.5f}"
        print(f"{row['method']:20s} {row['bytes_total']:>11,d} B  predicted {row['val_bpb_predicted']:.5f}{real}  {row['settings']}")
    return 0


def add_rd_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("rd", help="rate-distortion curve of the quantization settings of a checkpoint (bpb vs bytes, per method)")
    parser.add_argument("--out", type=Path, required=True, help="plot file: a JSON list of points (method, bytes_total, val_bpb_predicted, val_bpb)")
    parser.add_argument("--summary", type=Path, help="also write the calibration and every point's components here (JSON)")
    parser.add_argument("--checkpoint", default="data/train/checkpoint")
    parser.add_argument("--calibrate", default="data/calibrate", help="the Hessians (with the head's, from calibrate.head_hessian: adds that line)")
    parser.add_argument("--shards", default="data/shards", help="validation shards, for the real gaps")
    parser.add_argument("--tokenizer", default="data/tokenizer/tokenizer.model")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--method", action="append", choices=tuple(RD_METHODS), help="a line of the curve (repeatable; default: all)")
    parser.add_argument("--points", type=int, default=8, help="points per line")
    parser.add_argument("--span", type=float, nargs=2, default=(0.6, 1.6), metavar=("LO", "HI"), help="bytes range, in multiples of the configured settings' bytes_total")
    parser.add_argument("--evaluate", type=int, default=3, help="points per line evaluated for real (sliding window): both ends and evenly between")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (GPTQ on small matrices is fastest on 1)")
    parser.set_defaults(func=_rd)
