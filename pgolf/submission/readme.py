"""The README.md of a record folder: method (the effective config against pgolf's defaults), results
per seed, the timing ledger, the byte accounting and how to reproduce the run."""

from __future__ import annotations

import json
from typing import Any

from pgolf.ledger import TRAIN_LIMIT_SECONDS, hardware_note
from pgolf.submission.bundle import PROGRAM_NAME, Program

LEDGER = (  # timing key -> what it measures
    ("train_loop_s", "training loop (wall clock)"),
    ("hessians_on_train_ranks_s", "GPTQ Hessians on the training ranks, right after the loop"),
    ("calibrate_s", "GPTQ Hessians in the calibrate stage (outside the training budget)"),
    ("quantize_s", "quantization"),
)


def _value(value: Any) -> str:
    return "`" + json.dumps(value) + "`"


def _num(value: Any, digits: int = 5) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def results_table(record: dict, methods: list[str]) -> list[str]:
    lines = ["| seed | " + " | ".join(f"val_bpb {m}" for m in methods) + " | steps | bytes_model | bytes_total |",
             "|---|" + "---|" * len(methods) + "---|---|---|"]
    for seed, row in record["seed_results"].items():
        scores = " | ".join(_num(row["val_bpb_by_method"].get(m)) for m in methods)
        lines.append(f"| {seed} | {scores} | {_num(row['steps'])} | {_num(row['bytes_model'])} | {_num(row['artifact_bytes'])} |")
    std = record["val_bpb_std"]
    lines.append("")
    lines.append(f"Mean val_bpb ({record['eval_method']}): **{record['val_bpb']:.5f}**"
                 + (f" +- {std:.5f} (sample std over {len(record['seeds'])} seeds)" if std is not None else " (one seed: no std)"))
    return lines


def ledger_table(record: dict) -> list[str]:
    rows = record["seed_results"]
    keys = [(k, what) for k, what in LEDGER if any(k in r for r in rows.values())]
    keys += [(k, f"evaluation, {k[len('eval_'):-len('_s')]}") for k in sorted({k for r in rows.values() for k in r if k.startswith("eval_")})]
    lines = ["| phase | " + " | ".join(f"seed {s} (s)" for s in rows) + " |", "|---|" + "---|" * len(rows)]
    for key, what in keys:
        lines.append(f"| {what} | " + " | ".join(_num(r.get(key), 1) for r in rows.values()) + " |")
    lines.append("")
    for seed, r in rows.items():
        loop, hess = r.get("train_loop_s"), r.get("hessians_on_train_ranks_s") or 0.0
        if loop is not None:
            strict = loop + hess
            lines.append(f"- seed {seed}: strict reading (loop + Hessians) {strict:.1f} s, lenient (loop alone) {loop:.1f} s, "
                         f"{'within' if strict <= TRAIN_LIMIT_SECONDS else 'OVER'} the {TRAIN_LIMIT_SECONDS:.0f} s budget")
    lines.append(f"- {hardware_note((record.get('provenance') or {}).get('device'))}")
    return lines


def render_readme(record: dict, diff: list[tuple[str, Any, Any]], program: Program, pins: list[str],
                  runtime_code: int | None, methods: list[str]) -> str:
    lines = [f"# {record['name']}", "",
             f"{record['blurb']} Track {record['track']}, {record['date']}; hardware: {record['hardware']}; "
             + ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v is not None) + ".", "",
             "## Method", "",
             "pgolf's model, training, GPTQ quantization, packing and evaluation with these values changed from pgolf's "
             f"defaults (pgolf {record['versions']['pgolf']}, commit {record['git']['commit'] or 'unknown'}"
             + (", uncommitted changes" if record["git"]["dirty"] else "") + "):", ""]
    if diff:
        lines += ["| key | default | this run |", "|---|---|---|"] + [f"| `{k}` | {_value(d)} | {_value(v)} |" for k, d, v in diff]
    else:
        lines.append("(none: the defaults)")
    lines += ["", "## Results", ""] + results_table(record, methods)
    lines += ["", "## Timing ledger", ""] + ledger_table(record)
    lines += ["", "## Bytes", "",
              f"bytes_total = bytes_model + len({PROGRAM_NAME}) = {record['bytes_model']:,} + {record['bytes_code']:,} = "
              f"{record['bytes_model'] + record['bytes_code']:,} (seed {record['seeds'][0]}; the largest seed: {record['bytes_total']:,}).", "",
              f"`{PROGRAM_NAME}` is self-contained: {len(program.modules)} pgolf modules (minified), the run's params and a loader, "
              f"compressed (LZMA2 + base85) into {record['bytes_code']:,} bytes. The pipeline's own accounting counted only the "
              f"artifact runtime (pack.code_modules)" + (f": {runtime_code:,} bytes." if runtime_code is not None else "."), "",
              "## Reproduce", "",
              "    pip install -r requirements.txt",
              f"    torchrun --standalone --nproc_per_node=N {PROGRAM_NAME} --shards DATA/shards --tokenizer DATA/tokenizer.model --out run --seed SEED",
              "",
              f"(N = train.nproc of the run; `python {PROGRAM_NAME} ...` when it is 1.) The program trains, calibrates, quantizes, "
              "packs (failing over 16,000,000 bytes) and scores the artifact by every evaluation method; `run/train.log` is its "
              "log, `run/metrics/` its metrics, `run/pack/model.pgolf` the artifact (`pgolf inspect` reads it).", "",
              "## Files", "",
              f"- `{PROGRAM_NAME}`, `requirements.txt` ({', '.join(pins)})",
              "- `submission.json`",
              "- `metrics/seed-<S>/`: the run's metrics and timing files per seed; `train_curves/`: the training curves (DVCLive). "
              "The pipeline's stages keep no text logs.", ""]
    return "\n".join(lines)
