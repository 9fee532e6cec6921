"""`pgolf exp table`: DVC experiments side by side on the columns that matter, in ~100 columns.

`dvc exp show` prints every param and metric (200+ columns). This reads `dvc exp show --json`
(run from the repository root, or a saved copy with `--from FILE`) and prints one row per commit
and experiment with sliding and TTT val_bpb, bytes_total, and only the params whose values differ
between the rows. Columns that do not fit the width continue in a second block below.

The JSON is a list of commit entries `{rev, name, data: {params: {file: {data}}, metrics: {file:
{data}}}, error, experiments: [{revs: [entry...], executor: {state}, name}]}` (DVC's
`ExpState` / `ExpRange` / `SerializableExp`); the workspace comes first with rev "workspace".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgolf.errors import PgolfError

WIDTH = 100
METRICS = (  # header, metrics file (basename), key
    ("sliding bpb", "eval_sliding.json", "val_bpb"),
    ("ttt bpb", "eval_ttt.json", "val_bpb"),
    ("bytes_total", "pack.json", "bytes_total"),
)


@dataclass
class Row:
    label: str
    kind: str  # workspace | commit | experiment
    state: str = ""  # the executor's state when not a finished run (queued, running, failed) or "error"
    metrics: dict[str, Any] = field(default_factory=dict)  # header -> value
    params: dict[str, Any] = field(default_factory=dict)  # dotted key -> value


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _row(entry: dict, kind: str, label: str, state: str = "") -> Row:
    data = entry.get("data") or {}
    row = Row(label=label, kind=kind, state=state or ("error" if entry.get("error") else ""))
    for path, result in (data.get("params") or {}).items():
        prefix = "" if Path(path).name == "params.yaml" else f"{path}:"
        values = (result or {}).get("data") if isinstance(result, dict) else None
        if isinstance(values, dict):
            row.params.update({prefix + k: v for k, v in _flatten(values).items()})
    by_name = {Path(path).name: (result or {}).get("data") for path, result in (data.get("metrics") or {}).items()
               if isinstance(result, dict)}
    for header, name, key in METRICS:
        values = by_name.get(name)
        row.metrics[header] = values.get(key) if isinstance(values, dict) else None
    return row


def rows_from_json(exps: Any) -> list[Row]:
    """One Row per workspace, commit and experiment, in `dvc exp show` order."""
    if not isinstance(exps, list):
        raise PgolfError("dvc exp show --json: expected a list of commits")
    rows = []
    for entry in exps:
        if not isinstance(entry, dict) or "rev" not in entry:
            raise PgolfError("dvc exp show --json: an entry has no 'rev'")
        rev = str(entry["rev"])
        if rev == "workspace":
            rows.append(_row(entry, "workspace", "workspace"))
        else:
            rows.append(_row(entry, "commit", entry.get("name") or rev[:7]))
        for exp_range in entry.get("experiments") or []:
            executor = exp_range.get("executor") or {}
            state = executor.get("state") if executor.get("state") not in (None, "success") else ""
            for i, exp in enumerate(exp_range.get("revs") or []):
                name = exp.get("name") or exp_range.get("name") or str(exp.get("rev", ""))[:7]
                rows.append(_row(exp, "experiment", f"  {name}", state if i == 0 else ""))
    return rows


def differing_params(rows: list[Row]) -> list[str]:
    """Dotted params whose values are not all the same across the rows that have data."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.params if k not in keys]
    with_data = [r for r in rows if r.params] or rows
    return [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True) for r in with_data}) > 1]


def _short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that is unique among `keys`."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if sum(1 for k in keys if k == short or k.endswith("." + short)) == 1:
                names[key] = short
                break
        else:
            names[key] = key
    return names


def _cell(value: Any, header: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if header.endswith(" bpb") else f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}" if header == "bytes_total" else str(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def render(rows: list[Row], width: int = WIDTH, keys: list[str] | None = None) -> str:
    """The table: fixed label and metric columns, then differing params in blocks that fit `width`."""
    if not rows:
        return "no experiments\n"
    keys = differing_params(rows) if keys is None else keys
    names = _short_names(keys)
    best = {}
    for h in ("sliding bpb", "ttt bpb"):
        values = [r.metrics[h] for r in rows if isinstance(r.metrics.get(h), (int, float))]
        if len(set(values)) > 1:  # all equal: nothing to mark
            best[h] = min(values)

    def label(row: Row) -> str:
        return row.label + (f" ({row.state})" if row.state else "")

    def metric(row: Row, header: str) -> str:
        value = row.metrics.get(header)
        if not best or not header.endswith(" bpb"):
            return _cell(value, header)
        return _cell(value, header) + ("*" if header in best and value == best[header] else " ")

    fixed = [("Experiment", label, "<")] + [(h, (lambda r, h=h: metric(r, h)), ">") for h, _, _ in METRICS]
    cols = [(names[k], (lambda r, k=k: _fit(_cell(r.params.get(k)), 24)), ">") for k in keys]
    fixed_w = [max(len(h), *(len(f(r)) for r in rows)) for h, f, _ in fixed]
    blocks, current, used = [], [], sum(fixed_w) + 2 * (len(fixed) - 1)
    for col in cols:
        w = max(len(col[0]), *(len(col[1](r)) for r in rows))
        if current and used + 2 + w > width:
            blocks.append(current)
            current, used = [], fixed_w[0]
        current.append((col, w))
        used += 2 + w
    blocks.append(current)
    out = []
    for i, block in enumerate(blocks):
        head = fixed if i == 0 else fixed[:1]
        spec = list(zip(head, fixed_w)) + block
        out.append("  ".join(f"{h:{a}{w}}" for (h, _, a), w in spec).rstrip())
        out.append("  ".join("-" * w for _, w in spec))
        out += ["  ".join(f"{f(r):{a}{w}}" for (_, f, a), w in spec).rstrip() for r in rows]
        out.append("")
    legend = [f"{names[k]} = {k}" for k in keys if names[k] != k]
    notes = ["* lowest val_bpb"] if best else []
    if not keys:
        notes.append("no params differ between these rows")
    if legend:
        notes.append("params: " + ", ".join(legend))
    return "\n".join(out + [_fit(n, 10_000) for n in notes]) + "\n"


def _dvc_exp_show(extra: list[str]) -> Any:
    from pgolf.dvclock import find_dvc_dir

    dvc_dir = find_dvc_dir(Path.cwd())
    if dvc_dir is None:
        raise PgolfError("not inside a DVC repository (no .dvc directory here or above)")
    # The dvc installed beside pgolf (a dependency), whether or not the virtualenv is activated.
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *extra]
    proc = subprocess.run(cmd, cwd=dvc_dir.parent, capture_output=True, text=True, timeout=600)
    cmd[:2] = ["dvc"]
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PgolfError(f"{' '.join(cmd)} failed ({proc.returncode}): {last}")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise PgolfError(f"{' '.join(cmd)}: output is not JSON") from None


def _exp_table(args: argparse.Namespace) -> int:
    if args.source:
        try:
            exps = json.loads(Path(args.source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PgolfError(f"{args.source}: file not found") from None
        except ValueError as exc:
            raise PgolfError(f"{args.source}: not JSON ({exc})") from None
    else:
        extra = (["--all-commits"] if args.all_commits else []) + (["-n", str(args.num)] if args.num else [])
        exps = _dvc_exp_show(extra)
    rows = rows_from_json(exps)
    keys = differing_params(rows) + [k for k in args.param if k not in differing_params(rows)]
    print(render(rows, args.width, keys), end="")
    return 0


def add_exp_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("exp", help="DVC experiments, compactly")
    actions = parser.add_subparsers(dest="action", required=True)
    table = actions.add_parser("table", help="experiments side by side: val_bpb (sliding, ttt), bytes_total, differing params")
    table.add_argument("--from", dest="source", metavar="FILE", help="read saved `dvc exp show --json` output instead of running it")
    table.add_argument("-A", "--all-commits", action="store_true", help="passed to dvc exp show")
    table.add_argument("-n", "--num", type=int, help="passed to dvc exp show: this many commits from HEAD")
    table.add_argument("--param", action="append", default=[], metavar="KEY", help="also show this dotted param (repeatable)")
    table.add_argument("--width", type=int, default=WIDTH, help=f"most columns per block (default {WIDTH})")
    table.set_defaults(func=_exp_table)
