"""`pgolf summary`: the run's key numbers on one screen, from metrics/*.json.

`dvc metrics show` prints every key of every metrics file (150+ columns wide); this reads the same
files and prints what decides a submission: val_bpb per evaluation method, the quantization gap,
bytes against the limit, the training run, each stage's time, the compliance readings of the timing
ledger (pgolf.ledger: strict and lenient training, evaluation per method and their sum, and the
device they were measured on) and, with several seeds, their mean and standard deviation. A metrics
file that does not exist is reported as "not run"; a malformed one as "unreadable"; neither stops
the summary. `--record` exits 1 with one line when a reading exceeds its limit or was not measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

from pgolf.io import timing_path
from pgolf.ledger import hardware_note, readings, record_failures

WIDTH = 100
FILES = ("audit", "train", "calibrate", "quantize", "pack", "eval_sliding", "eval_ttt", "aggregate")
DEFAULT_LIMIT = 16_000_000


def _load(path: Path) -> tuple[dict, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, "not run"
    except (OSError, ValueError) as exc:
        return {}, f"unreadable ({type(exc).__name__})"
    if not isinstance(data, dict):
        return {}, "unreadable (not a JSON object)"
    return data, "ok"


def _num(data: dict, key: str) -> float | int | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _seed_stats(aggregate: dict, method: str) -> dict | None:
    block = aggregate.get(method)
    if not isinstance(block, dict):
        return None
    values = [v for v in block.get("val_bpb") or [] if isinstance(v, (int, float))]
    welch = block.get("welch") if isinstance(block.get("welch"), dict) else {}
    return {
        "values": values,
        "mean": _num(block, "mean_bpb"),
        "std": _num(block, "std_bpb"),
        "n": block.get("n", len(values)),
        "delta_bpb": _num(block, "delta_bpb"),
        "delta_nats_per_token": _num(block, "delta_nats_per_token"),
        "p_value": _num(welch, "p_value"),
        "record_claim_holds": block.get("record_claim_holds"),
        "tests_met": None if not isinstance(block.get("tests"), dict) else
        [name for name, test in block["tests"].items() if isinstance(test, dict) and test.get("meets") is True],
    }


def _device(*metrics: dict) -> dict | None:
    """The device of the first metrics file that records its provenance."""
    for data in metrics:
        provenance = data.get("provenance")
        if isinstance(provenance, dict) and isinstance(provenance.get("device"), dict):
            return provenance["device"]
    return None


def compliance(metrics_dir: Path, train: dict, calibrate: dict, hessian_seconds: float | None) -> dict[str, Any]:
    """The ledger's readings (every eval_<method> stage that has a timing file) and where they were measured."""
    evals = {path.stem.removeprefix("eval_"): _load(path)[0] for path in sorted((metrics_dir / "timing").glob("eval_*.json"))}
    found = readings(train, hessian_seconds, evals)
    eval_metrics = [_load(metrics_dir / f"eval_{m}.json")[0] for m in evals]
    device = _device(train, calibrate, *eval_metrics)
    return {"readings": [r.to_dict() for r in found], "failures": record_failures(found), "device": device, "note": hardware_note(device)}


def collect(metrics_dir: str | Path = "metrics") -> dict[str, Any]:
    """The summary as plain data (what `--json` prints)."""
    metrics_dir = Path(metrics_dir)
    loaded = {name: _load(metrics_dir / f"{name}.json") for name in FILES}
    # Durations and throughputs live in metrics/timing/ (they change run to run; see pgolf.io.timing_path).
    m = {name: {**_load(timing_path(metrics_dir / f"{name}.json"))[0], **data} for name, (data, _) in loaded.items()}
    sliding, ttt, pack, train = m["eval_sliding"], m["eval_ttt"], m["pack"], m["train"]
    total, limit = _num(pack, "bytes_total"), _num(pack, "limit_bytes")
    if limit is None and total is not None:
        limit = DEFAULT_LIMIT
    aggregate = m["aggregate"]
    seeds = aggregate.get("seeds") if isinstance(aggregate.get("seeds"), list) else None
    reference = aggregate.get("reference") if isinstance(aggregate.get("reference"), dict) else {}
    on_ranks = m["calibrate"].get("collected_on") == "train_ranks"
    hessian_seconds = _num(train, "calibrate_seconds") if on_ranks else _num(m["calibrate"], "calibrate_time_s")
    return {
        "metrics_dir": str(metrics_dir),
        "files": {f"{name}.json": status for name, (_, status) in loaded.items()},
        "val_bpb": {
            "sliding": _num(sliding, "val_bpb"),
            "ttt": _num(ttt, "val_bpb"),
            "ttt_no_ttt": _num(ttt, "val_bpb_no_ttt"),
        },
        "ttt_gain_bpb": _num(ttt, "ttt_gain_bpb"),
        "quantization_gap": {"sliding": _num(sliding, "quantization_gap"), "ttt": _num(ttt, "quantization_gap")},
        "val_loss": {"sliding": _num(sliding, "val_loss"), "ttt": _num(ttt, "val_loss"), "train": _num(train, "val_loss")},
        "ttt_legality_passed": (ttt.get("legality") or {}).get("passed") if isinstance(ttt.get("legality"), dict) else None,
        "bytes": {
            "total": total,
            "model": _num(pack, "bytes_model"),
            "code": _num(pack, "bytes_code"),
            "limit": limit,
            "headroom": None if total is None or limit is None else limit - total,
            "compressor": pack.get("compressor"),
        },
        "train": {
            "steps": _num(train, "steps"),
            "tokens_seen": _num(train, "tokens_seen"),
            "tokens_per_second": _num(train, "tokens_per_second"),
            "wallclock_seconds": _num(train, "wallclock_seconds"),
            "calibrate_seconds": _num(train, "calibrate_seconds") if m["calibrate"].get("collected_on") == "train_ranks" else None,
            "train_loss": _num(train, "train_loss"),
            "params_count": _num(train, "params_count"),
            "stopped_by": train.get("stopped_by"),
        },
        "validation": {
            "tokens": _num(m["audit"], "val_tokens"),
            "bytes": _num(m["audit"], "val_bytes"),
            "bytes_per_token": _num(m["audit"], "bytes_per_token"),
        },
        "stage_seconds": {
            "train": _num(train, "wallclock_seconds"),
            # Collected on the training ranks (calibrate.on_train_ranks): the seconds after the loop, in the training budget.
            "calibrate": _num(train, "calibrate_seconds") if m["calibrate"].get("collected_on") == "train_ranks" else _num(m["calibrate"], "calibrate_time_s"),
            "quantize": _num(m["quantize"], "quantize_time_s"),
            "eval_sliding": _num(sliding, "seconds"),
            "eval_ttt": _num(ttt, "seconds"),
        },
        "compliance": compliance(metrics_dir, train, m["calibrate"], hessian_seconds),
        "seeds": None if not aggregate else {
            "seeds": seeds,
            "sliding": _seed_stats(aggregate, "sliding"),
            "ttt": _seed_stats(aggregate, "ttt"),
            "reference": {"name": reference.get("name"), "mean_bpb": _num(reference, "mean_bpb")},
        },
    }


# ---------------------------------------------------------------- text


def _f(value: Any, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"  # no space: a line never breaks inside it


def render(summary: dict) -> str:
    s = summary
    bpb, gap, loss, b, t = s["val_bpb"], s["quantization_gap"], s["val_loss"], s["bytes"], s["train"]
    rows = [
        ("val_bpb", f"sliding {_f(bpb['sliding'])}   ttt {_f(bpb['ttt'])}   "
                    f"(no ttt {_f(bpb['ttt_no_ttt'])}, gain {_f(s['ttt_gain_bpb'])})"),
        ("quant gap", f"sliding {_f(gap['sliding'], sign=True)}   ttt {_f(gap['ttt'], sign=True)}   (artifact - checkpoint bpb)"),
        ("val_loss", f"sliding {_f(loss['sliding'])}   ttt {_f(loss['ttt'])}   train-end {_f(loss['train'])} nats/token"),
    ]
    if b["total"] is not None and b["limit"]:
        share = 100.0 * b["total"] / b["limit"]
        verdict = "fits" if b["headroom"] >= 0 else "OVER THE LIMIT"
        rows.append(("bytes_total", f"{_f(b['total'])} of {_f(b['limit'])} ({share:.2f}%, {verdict}; "
                                    f"headroom {_f(b['headroom'])})"))
    else:
        rows.append(("bytes_total", "-"))
    rows.append(("", f"model {_f(b['model'])} + code {_f(b['code'])}" + (f"   (compressor {b['compressor']})" if b["compressor"] else "")))
    tps = None if t["tokens_per_second"] is None else round(t["tokens_per_second"])
    rows.append(("train", f"{_f(t['steps'])} steps, {_f(t['tokens_seen'])} tokens, {_f(tps)} tokens/s, "
                          f"{_seconds(t['wallclock_seconds'])}" + (f", stopped by {t['stopped_by']}" if t["stopped_by"] else "")
                          + (f" + calibrate {_seconds(t['calibrate_seconds'])} = {_seconds(t['wallclock_seconds'] + t['calibrate_seconds'])}"
                             if t["calibrate_seconds"] is not None and t["wallclock_seconds"] is not None else "")))
    v = s["validation"]
    if v["tokens"] is not None:
        rows.append(("validation", f"{_f(v['tokens'])} tokens, {_f(v['bytes'])} bytes ({_f(v['bytes_per_token'], 3)} bytes/token)"))
    times = [f"{name} {_seconds(sec)}" for name, sec in s["stage_seconds"].items() if sec is not None]
    rows.append(("stage times", ", ".join(times) if times else "-"))
    rows += _compliance_rows(s["compliance"])
    rows += _seed_rows(s["seeds"])
    not_run = [name for name, status in s["files"].items() if status == "not run"]
    if not_run:
        rows.append(("not run", ", ".join(not_run) + " (no such file; `-` above)"))
    unreadable = [f"{name} {status[len('unreadable '):]}" for name, status in s["files"].items() if status.startswith("unreadable")]
    if unreadable:
        rows.append(("unreadable", ", ".join(unreadable)))
    width = max(len(label) for label, _ in rows)
    lines = [f"pgolf summary of {s['metrics_dir']}/"]
    for label, text in rows:
        pad = " " * (width + 4)
        lines += textwrap.wrap(text, WIDTH, initial_indent=f"  {label:<{width}}  ", subsequent_indent=pad,
                               break_on_hyphens=False) or [f"  {label}"]
    return "\n".join(lines) + "\n"


def _compliance_rows(c: dict) -> list[tuple[str, str]]:
    def show(r: dict) -> str:
        over = f" > {r['limit']:.0f}s" if r["exceeds"] else ""
        return f"{r['name'].removeprefix('eval ')} {_seconds(r['seconds'])}{over}"

    train = [show(r) for r in c["readings"] if not r["name"].startswith("eval")]
    evals = [show(r) for r in c["readings"] if r["name"].startswith("eval")]
    return [("compliance", f"train {', '.join(train)} (limit 600s); eval {', '.join(evals)}"), ("", c["note"])]


def _seed_rows(seeds: dict | None) -> list[tuple[str, str]]:
    if not seeds:
        return [("seeds", "-")]
    rows = []
    names = seeds.get("seeds") or []
    for method in ("sliding", "ttt"):
        st = seeds.get(method)
        if not st:
            continue
        spread = f" +- {_f(st['std'])}" if st["std"] is not None else " (one seed: no std)"
        label = f"seeds ({len(names)})" if not rows else ""
        rows.append((label, f"{method:<7} {_f(st['mean'])}{spread}  n={st['n']}"))
    ref = seeds.get("reference") or {}
    st = seeds.get("sliding") or {}
    if ref.get("mean_bpb") is not None and st.get("delta_bpb") is not None:
        claim = {True: "holds", False: "no", None: "-"}[st.get("record_claim_holds")]
        p = f", p {st['p_value']:.3g}" if st.get("p_value") is not None else ""
        met = "" if st.get("tests_met") is None else f"; tests met: {', '.join(st['tests_met']) or 'none'}"
        rows.append(("", f"vs {ref.get('name') or 'reference'} {_f(ref['mean_bpb'])}: {_f(st['delta_bpb'], sign=True)} bpb "
                         f"sliding{p}; record claim: {claim}{met}"))
    if names:
        rows.insert(0, ("seeds", ", ".join(str(x) for x in names)))
        rows[1] = ("", rows[1][1])
    return rows


def _summary(args: argparse.Namespace) -> int:
    summary = collect(args.metrics)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary), end="")
    failures = summary["compliance"]["failures"]
    if args.record and failures:
        print(f"record check failed: {'; '.join(failures)} ({summary['compliance']['note']})", file=sys.stderr)
        return 1
    return 0


def add_summary_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("summary", help="the run's key numbers on one screen (from metrics/*.json)")
    parser.add_argument("--metrics", default="metrics", help="directory of the metrics files (default: metrics)")
    parser.add_argument("--json", action="store_true", help="the same numbers as one JSON object")
    parser.add_argument("--record", action="store_true",
                        help="exit 1 when a compliance reading exceeds its limit (600 s training, strict and lenient; 600 s eval per method) or was not measured")
    parser.set_defaults(func=_summary)
