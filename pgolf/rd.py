"""`pgolf rd` and the stage `rd`: the rate-distortion curve of a checkpoint's quantization settings
(bpb vs bytes, one line per method), its proxy calibrated against real sliding-window gaps or
taken from quantize.fit_weights (issue 19). The numerics are `pgolf.quant.ratedistortion`; this
module joins them to the checkpoint, the Hessians, the artifact runtime and the evaluation (kept
out of the quantize stage's imports).

The stage writes metrics/plots/rd.json (one row per point: method, bytes_total, val_bpb_predicted,
val_bpb where scored for real; drawn by `dvc plots show` with templates/rd.json and by `report`)
and metrics/rd.json (the weights, the checkpoint's score, each line's best measured point).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.config.rd import RDParams
from pgolf.io import write_json_atomic, write_metrics
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import QuantizedModel
from pgolf.quant.ratedistortion import RD_METHODS, Packer, sweep


def setup(checkpoint: str | Path, calibrate: str | Path, shards: str | Path, tokenizer: str | Path, params_path: str | Path = "params.yaml",
          hessians: dict[str, torch.Tensor] | None = None, eval_tokens: int = 0) -> tuple[Packer, QuantizeParams, Callable[[QuantizedModel], float], float]:
    """(packer with the real tokenizer hash and bytes_code, quantize params, the real sliding-window
    gap of a quantized model as the artifact rebuilds it, the checkpoint's sliding val_bpb); scores
    on the first `eval_tokens` validation tokens (0: all)."""
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
    if eval_tokens:
        stream = stream.prefix(eval_tokens)
    base_bpb = METHODS["sliding"].gap_score(model.eval(), stream, evals)

    def gap(qm: QuantizedModel) -> float:
        loaded = model_from_artifact(artifact_from_parsed(parse_artifact(pack_model(qm, pack, meta).data)), "rd")
        return METHODS["sliding"].gap_score(loaded, stream, evals) - base_bpb  # the eval stages check legality; the curve only scores

    return packer, params, gap, base_bpb


def curve_rows(result: dict, base_bpb: float) -> list[dict]:
    """The plot's rows: each point's bytes and its val_bpb, predicted (checkpoint + proxy gap) and measured."""
    return [{"method": r["method"], "bytes_total": r["bytes_total"], "bytes_model": r["bytes_model"], "val_bpb_predicted": base_bpb + r["gap_predicted"],
             "val_bpb": None if r["gap"] is None else base_bpb + r["gap"], "settings": r["settings"]} for r in result["rows"]]


def curve_summary(result: dict, rows: list[dict], base_bpb: float, eval_tokens: int) -> dict:
    """metrics/rd.json: the proxy's weights, the checkpoint's score and, per line, its measured points' best."""
    lines = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        measured = [r for r in rows if r["method"] == method and r["val_bpb"] is not None]
        lines[method] = {"points": sum(r["method"] == method for r in rows), "measured": len(measured),
                         "bytes_total_min": min(r["bytes_total"] for r in rows if r["method"] == method),
                         "bytes_total_max": max(r["bytes_total"] for r in rows if r["method"] == method)}
    return {"checkpoint_val_bpb": base_bpb, "eval_tokens": eval_tokens or None, "base_bytes_total": result["base_bytes_total"],
            "weights": result["weights"], "calibration_rms_bpb": result["calibration_rms_bpb"], "lines": lines}


def print_curve(rows: list[dict], summary: dict) -> None:
    rms = summary["calibration_rms_bpb"]
    source = "quantize.fit_weights" if rms is None else f"calibrated (RMS {rms:.5f} bpb)"
    print(f"checkpoint sliding val_bpb {summary['checkpoint_val_bpb']:.5f}; proxy weights, {source}:")
    print(", ".join(f"{k}: {v:.6g}" for k, v in summary["weights"].items()))
    for row in rows:
        real = "" if row["val_bpb"] is None else f"  measured {row['val_bpb']:.5f}"
        print(f"{row['method']:20s} {row['bytes_total']:>11,d} B  predicted {row['val_bpb_predicted']:.5f}{real}  {row['settings']}")


def rd_stage(rd: RDParams, checkpoint: str | Path, calibrate: str | Path, shards: str | Path, tokenizer: str | Path,
             plot_path: str | Path, metrics_path: str | Path, params_path: str | Path = "params.yaml") -> dict:
    """The stage `rd`: the curve of `rd.methods` at quantize's settings, written as the plot and the summary."""
    from pgolf.ledger import Phases
    from pgolf.provenance import data_fingerprint, shard_files, stage_provenance

    if not rd.methods:
        summary = {"lines": {}}
        write_json_atomic(plot_path, [])
        write_metrics(metrics_path, summary, Phases().ledger())
        print("rd: no curve (rd.methods is empty)")
        return summary
    if rd.threads:
        torch.set_num_threads(rd.threads)
    phases = Phases()
    with phases("setup"):
        packer, params, gap, base_bpb = setup(checkpoint, calibrate, shards, tokenizer, params_path, eval_tokens=rd.eval_tokens)
    grid = params.model_copy(update={"fit_bits": rd.fit_bits, "fit_k_steps": rd.fit_k_steps})
    with phases("sweep"):
        result = sweep(packer, grid, gap, rd.methods, rd.points, (rd.span_lo, rd.span_hi), rd.evaluate, None if rd.calibrate else params.fit_weights)
    rows = curve_rows(result, base_bpb)
    summary = curve_summary(result, rows, base_bpb, rd.eval_tokens)
    write_json_atomic(plot_path, rows)
    provenance = stage_provenance({"rd": rd, "quantize": params}, data_fingerprint(shard_files(shards, ("val",)), tokenizer=tokenizer), torch.device("cpu"))
    write_metrics(metrics_path, summary, phases.ledger(), provenance)
    print_curve(rows, summary)
    return summary


def _rd(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    packer, params, gap, base_bpb = setup(args.checkpoint, args.calibrate, args.shards, args.tokenizer, args.params, eval_tokens=args.eval_tokens)
    result = sweep(packer, params, gap, args.method or list(RD_METHODS), args.points, (args.span[0], args.span[1]), args.evaluate)
    rows = curve_rows(result, base_bpb)
    write_json_atomic(args.out, rows)
    if args.summary:
        write_json_atomic(args.summary, result | {"checkpoint_bpb": base_bpb})
    print_curve(rows, curve_summary(result, rows, base_bpb, args.eval_tokens))
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
    parser.add_argument("--eval-tokens", type=int, default=0, help="real gaps on the first N validation tokens (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (GPTQ on small matrices is fastest on 1)")
    parser.set_defaults(func=_rd)
