"""`pgolf plan`: feasibility before spending (issue 16): bytes and time predicted from params alone.

From the params file, before any training: parameters per quantization group, their predicted
packed bytes (`pgolf.plan_bytes`), bytes_code (measured exactly, `pgolf.pack.code_bytes`),
bytes_total against pack.limit_bytes, and training steps/tokens and evaluation seconds on a device
kind (`pgolf.plan_time`, `pgolf.plan_table.DEVICES`). `--check` compares a real run's
metrics/pack.json and metrics/timing/*.json with the prediction and exits 1 when bytes_total is
off by more than the tolerance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pgolf.config.sections import load_params
from pgolf.errors import PgolfError
from pgolf.io import timing_path
from pgolf.pack.code_bytes import measure_code_bytes
from pgolf.plan_bytes import PASSTHROUGH, census, container_bytes, group_bytes
from pgolf.plan_table import DEVICES
from pgolf.plan_time import eval_seconds, shape_of, train_time
from pgolf.quant.methods import QUANTIZERS

DEFAULT_TOLERANCE_PCT = 2.0
EVAL_SECTIONS = {"sliding": "eval_sliding", "ttt": "eval_ttt", "tilt": "eval_tilt"}
# Validation tokens of the official exports (CHALLENGE.md) when no audit of this data exists yet.
OFFICIAL_VAL_TOKENS = {"sp1024": 62_021_632, "sp8192": 40_500_000, "sp8192_lossless_caps_caseops_v1_reserved": 47_851_520}
BYTES_PER_TOKEN_GUESS = 2.87  # the default corpus at vocab 1024 (metrics/audit.json), for an estimate only


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _vocab(sections: dict) -> tuple[int, str]:
    model = sections["train"].model
    if model.vocab_size is not None:
        return model.vocab_size, "train.model.vocab_size"
    return sections["tokenizer"].vocab_size, "tokenizer.vocab_size"


def _val_tokens(sections: dict, metrics_dir: Path | None) -> tuple[int, str]:
    audit = _read_json(metrics_dir / "audit.json") if metrics_dir is not None else {}
    if isinstance(audit.get("val_tokens"), int):
        return audit["val_tokens"], f"{metrics_dir / 'audit.json'}"
    fetch = sections["fetch"]
    if fetch.source == "hf" and fetch.variant in OFFICIAL_VAL_TOKENS:
        return OFFICIAL_VAL_TOKENS[fetch.variant], f"official {fetch.variant} validation (CHALLENGE.md)"
    guess = sections["export"].val_docs * fetch.doc_target_bytes / BYTES_PER_TOKEN_GUESS
    return int(guess), f"estimate: export.val_docs x fetch.doc_target_bytes / {BYTES_PER_TOKEN_GUESS} bytes per token"


def uncalibrated(sections: dict) -> list[str]:
    """Settings the byte model was not fitted on (its constants come from default pack/quantize coders)."""
    quantize, pack = sections["quantize"], sections["pack"]
    found = [f"pack.{key}: {getattr(pack, key)}" for key, fitted in (("compressor", ("best", "ans")), ("layout", ("column",)),
                                                                     ("distribution", ("group",)), ("side_codec", ("brotli",)))
             if getattr(pack, key) not in fitted]
    if quantize.scale != "std":
        found.append(f"quantize.scale: {quantize.scale} (k is ignored; entropy modelled at the given k)")
    return found


def make_plan(params_path: str | Path = "params.yaml", device: str = "cpu", repo_root: str | Path = ".",
              metrics_dir: str | Path | None = "metrics") -> dict[str, Any]:
    """The prediction as plain data (what `--json` prints)."""
    if device not in DEVICES:
        raise PgolfError(f"--device {device}: unknown device kind (known: {', '.join(DEVICES)})")
    dev = DEVICES[device]
    sections = load_params(params_path)
    train, quantize, pack = sections["train"], sections["quantize"], sections["pack"]
    vocab, vocab_source = _vocab(sections)
    model = train.model.model_copy(update={"vocab_size": vocab})
    tensors = census(model, quantize)
    shape = shape_of(model, tensors)
    timing = train_time(shape, model, train, dev)
    hessian_groups = {"attention", "mlp", "other"} | ({"embedding"} if sections["calibrate"].head_hessian and model.tied_embeddings else set())
    gptq = hessian_groups if QUANTIZERS[quantize.method].needs_hessian else set()
    fetch = sections["fetch"]
    corpus = "+".join(fetch.builtin) if fetch.source == "builtin" else fetch.variant
    groups = group_bytes(tensors, quantize, gptq, timing.tokens / vocab, corpus)
    container = container_bytes(tensors, quantize, pack)
    code = measure_code_bytes(pack.code_modules, repo_root)
    bytes_model = round(sum(g.total for g in groups.values()) + container)
    total = bytes_model + code.bytes_code
    if quantize.target_bytes is not None:  # the quantize stage fits bits and k to land just under it
        total, bytes_model = quantize.target_bytes, quantize.target_bytes - code.bytes_code
    metrics_path = Path(metrics_dir) if metrics_dir is not None else None
    val_tokens, val_source = _val_tokens(sections, metrics_path)
    evals = {method: eval_seconds(shape, model, method, sections[name], val_tokens, dev) for method, name in EVAL_SECTIONS.items()}
    return {
        "params": str(params_path),
        "device": {"name": dev.name, "source": dev.source},
        "model": {"layers": model.layers, "width": model.width, "vocab_size": vocab, "vocab_source": vocab_source,
                  "params": sum(t.numel for t in tensors), "matmul_params_per_token": shape.applied(model.layers)},
        "groups": {name: {"tensors": g.tensors, "params": g.params, "bits": g.bits, "k": g.k, "bits_per_symbol": g.bits_per_symbol,
                          "symbol_bytes": round(g.symbol_bytes), "scale_bytes": round(g.scale_bytes), "extras_bytes": round(g.extras_bytes),
                          "plain_bytes": round(g.plain_bytes), "bytes": round(g.total)} for name, g in groups.items()},
        "fit_to_budget": quantize.target_bytes is not None,
        "bytes_container": round(container),
        "bytes_model": bytes_model,
        "bytes_code": code.bytes_code,
        "code_files": len(code.files),
        "bytes_total": total,
        "limit_bytes": pack.limit_bytes,
        "headroom_bytes": pack.limit_bytes - total,
        "fits": total <= pack.limit_bytes,
        "train": {"tokens_per_second": timing.tokens_per_s, "step_seconds": timing.step_s, "steps": timing.steps,
                  "tokens": timing.tokens, "seconds": timing.seconds, "stopped_by": timing.stopped_by},
        "eval_seconds": evals,
        "val_tokens": val_tokens,
        "val_tokens_source": val_source,
        "uncalibrated": uncalibrated(sections),
    }


def _pct(predicted: float, actual: float | None) -> float | None:
    return None if not actual else 100.0 * (predicted - actual) / actual


def check_plan(plan: dict[str, Any], metrics_dir: str | Path = "metrics") -> list[dict[str, Any]]:
    """Rows (quantity, predicted, actual, error %) against a real run's metrics; actual None where not run.

    The first row decides --check: bytes_total, or, when the sources changed since the run
    (bytes_code differs; bytes_code is measured exactly, never predicted), the predicted model
    plus the run's bytes_code, so that the check tests the prediction and not the code's drift."""
    metrics_dir = Path(metrics_dir)
    pack = _read_json(metrics_dir / "pack.json")
    train = {**_read_json(timing_path(metrics_dir / "train.json")), **_read_json(metrics_dir / "train.json")}
    run_code = pack.get("bytes_code")
    rows = [("bytes_total", plan["bytes_total"], pack.get("bytes_total"))]
    if isinstance(run_code, int) and run_code != plan["bytes_code"]:
        rows.insert(0, ("bytes_total, run's code", plan["bytes_model"] + run_code, pack.get("bytes_total")))
    rows += [("bytes_model", plan["bytes_model"], pack.get("bytes_model")), ("bytes_code", plan["bytes_code"], run_code)]
    measured = pack.get("groups") if isinstance(pack.get("groups"), dict) else {}
    for name, group in plan["groups"].items():
        if name in measured:
            m = measured[name]
            rows.append((f"{name} bytes", group["symbol_bytes"] + group["scale_bytes"] + group["extras_bytes"],
                         m.get("packed_bytes", 0) + m.get("scale_bytes", 0) + m.get("extras_bytes", 0)))
    rows += [("train tokens/s", plan["train"]["tokens_per_second"], train.get("tokens_per_second")),
             ("train steps", plan["train"]["steps"], train.get("steps")),
             ("train seconds", plan["train"]["seconds"], train.get("wallclock_seconds"))]
    for method, seconds in plan["eval_seconds"].items():
        rows.append((f"eval {method} seconds", seconds, _read_json(timing_path(metrics_dir / f"eval_{method}.json")).get("seconds")))
    return [{"quantity": q, "predicted": p, "actual": a, "error_pct": _pct(p, a)} for q, p, a in rows]


def check_failed(rows: list[dict[str, Any]], tolerance_pct: float) -> bool:
    decisive = rows[0]["error_pct"]
    return decisive is not None and abs(decisive) > tolerance_pct


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_plan(plan: dict[str, Any]) -> str:
    m, t = plan["model"], plan["train"]
    lines = [f"pgolf plan of {plan['params']} on {plan['device']['name']} ({plan['device']['source']})",
             f"  model        {m['layers']} x {m['width']}, vocab {m['vocab_size']} ({m['vocab_source']}), {m['params']:,} params",
             f"  {'group':<12} {'tensors':>7} {'params':>11} {'bits':>4} {'k':>6} {'bits/sym':>8} {'bytes':>11}"]
    for name, g in plan["groups"].items():
        quantized = name != PASSTHROUGH
        lines.append(f"  {name:<12} {g['tensors']:>7} {g['params']:>11,} {g['bits'] if quantized else '-':>4} {_n(g['k'], 1) if quantized else '-':>6} "
                     f"{_n(g['bits_per_symbol'], 2) if quantized else '-':>8} {g['bytes']:>11,}")
    lines.append(f"  {'container':<12} {'':>7} {'':>11} {'':>4} {'':>6} {'':>8} {plan['bytes_container']:>11,}")
    fit = "  (quantize.target_bytes: bits and k fitted to it)" if plan["fit_to_budget"] else ""
    lines.append(f"  bytes_model  {plan['bytes_model']:,} + code {plan['bytes_code']:,} ({plan['code_files']} files){fit}")
    share = 100.0 * plan["bytes_total"] / plan["limit_bytes"]
    verdict = "fits" if plan["fits"] else f"OVER by {-plan['headroom_bytes']:,}"
    lines.append(f"  bytes_total  {plan['bytes_total']:,} of {plan['limit_bytes']:,} ({share:.2f}%, {verdict}; headroom {plan['headroom_bytes']:,})")
    lines.append(f"  train        {t['tokens_per_second']:,.0f} tokens/s ({1000 * t['step_seconds']:,.1f} ms/step): {t['steps']:,} steps, "
                 f"{t['tokens']:,} tokens, {t['seconds']:,.1f} s (stopped by {t['stopped_by']})")
    evals = ", ".join(f"{k} {v:,.1f} s" for k, v in plan["eval_seconds"].items())
    lines.append(f"  eval         {evals} over {plan['val_tokens']:,} val tokens ({plan['val_tokens_source']})")
    if plan["uncalibrated"]:
        lines.append(f"  uncalibrated {'; '.join(plan['uncalibrated'])}: bytes less certain than the 2 % goal")
    return "\n".join(lines)


def format_check(rows: list[dict[str, Any]], tolerance_pct: float) -> str:
    lines = [f"  {'check':<22} {'predicted':>13} {'actual':>13} {'error':>8}"]
    for r in rows:
        digits = 1 if isinstance(r["predicted"], float) and abs(r["predicted"]) < 1000 else 0
        err = "-" if r["error_pct"] is None else f"{r['error_pct']:+.2f}%"
        lines.append(f"  {r['quantity']:<22} {_n(r['predicted'], digits):>13} {_n(r['actual'], digits):>13} {err:>8}")
    first = rows[0]
    if first["quantity"] != "bytes_total":
        lines.append("  note: bytes_code differs from the run's (the sources changed since its pack); the check uses the run's code")
    ok = not check_failed(rows, tolerance_pct)
    lines.append(f"  {first['quantity']} {'within' if ok else 'OFF BY MORE THAN'} {tolerance_pct:g}% ({first['error_pct']:+.2f}%)")
    return "\n".join(lines)


def _plan_command(args: argparse.Namespace) -> int:
    plan = make_plan(args.params, args.device, args.root, args.metrics)
    rows = check_plan(plan, args.metrics) if args.check else None
    if rows is not None and rows[0]["actual"] is None:
        raise PgolfError(f"{Path(args.metrics) / 'pack.json'}: no bytes_total to check against (has the pack stage run?)")
    failed = rows is not None and check_failed(rows, args.tolerance)
    if args.json:
        print(json.dumps({**plan, **({"check": rows, "check_ok": not failed} if rows is not None else {})}, indent=2))
    else:
        print(format_plan(plan))
        if rows is not None:
            print(format_check(rows, args.tolerance))
    return 1 if failed else 0


def add_plan_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plan", help="predict bytes, steps and eval seconds from params alone; --check compares a real run")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--device", default="cpu", choices=sorted(DEVICES), help="device kind of the time estimates (default: cpu)")
    parser.add_argument("--json", action="store_true", help="the prediction (and check) as one JSON object")
    parser.add_argument("--check", action="store_true", help="compare with the run's metrics; exit 1 when bytes_total is off by more than --tolerance")
    parser.add_argument("--metrics", default="metrics", help="metrics directory of the run (default: metrics)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_PCT, help="bytes_total tolerance of --check, in percent (default: 2)")
    parser.add_argument("--root", default=".", help="repository root whose pgolf sources bytes_code counts (default: .)")
    parser.set_defaults(func=_plan_command)


__all__ = ["add_plan_command", "check_failed", "check_plan", "format_check", "format_plan", "make_plan"]
