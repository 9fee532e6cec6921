"""`pgolf submission export`: a finished run -> the challenge's record folder, in one call.

From the DVC outputs of a run (params.yaml, metrics/*.json with their timing sidecars, the extra
seeds under data/aggregate/seed-<S>/, the training curves in dvclive/train) it writes
`<out>/<date>_<name>/`:
- train_gpt.py: the self-contained program (`pgolf.submission.bundle`) with the run's effective
  params embedded; its length is the submission's bytes_code;
- submission.json: the fields the records use (val_bpb mean and std over seeds, per-seed results,
  bytes_total = bytes_model + len(train_gpt.py), seeds, hardware, versions), with pgolf's own
  accounting beside it. Hardware, versions (torch, CUDA, driver) and the git commit are the run's,
  from the train metrics' provenance (pgolf.provenance) and its timing sidecar; only a run without
  them falls back on this process's versions, this checkout's commit and --hardware;
- README.md (`pgolf.submission.readme`), requirements.txt (pinned versions of what the program
  imports), and the run's records: metrics/ (every metrics and timing file, per seed) and
  train_curves/ (DVCLive). The stages keep no text logs (they log to the terminal); the program
  writes its own, <out>/train.log.
Over the limit it fails with one line and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf import __version__
from pgolf.config.sections import SECTIONS, load_params
from pgolf.errors import ArtifactError, DataError
from pgolf.eval.methods import stage_methods
from pgolf.imports import PACKAGE
from pgolf.io import read_json, timing_path, write_json_atomic
from pgolf.stats import summarize
from pgolf.submission.bundle import PROGRAM_NAME, Program, build_program, requirements
from pgolf.submission.readme import render_readme

TRACK = "10min_16mb"
RECORDS_DIR = Path("records/track_10min_16mb")
LIMIT_BYTES = 16_000_000
EMBEDDED = ("train", "calibrate", "quantize", "pack")  # with every eval_<method> section


@dataclass(frozen=True)
class RunPaths:
    root: Path
    params: Path
    metrics: Path
    aggregate: Path
    curves: Path

    @classmethod
    def under(cls, root: str | Path, params: str = "params.yaml", metrics: str = "metrics", aggregate: str = "data/aggregate",
              curves: str = "dvclive/train") -> RunPaths:
        root = Path(root)
        return cls(root, root / params, root / metrics, root / aggregate, root / curves)


def embedded_params(sections: dict[str, Any]) -> dict[str, dict]:
    """The sections the program needs, every value resolved (defaults written out)."""
    names = [*EMBEDDED, *(f"eval_{m}" for m in stage_methods())]
    return {name: sections[name].model_dump(mode="json") for name in names}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_diff(sections: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, default, value) for every value of the run that differs from pgolf's default."""
    rows = []
    for name, section in sections.items():
        ran, default = flatten(section.model_dump(mode="json"), name), flatten(SECTIONS[name]().model_dump(mode="json"), name)
        rows += [(key, default.get(key), value) for key, value in ran.items() if default.get(key) != value]
    return rows


def _load(path: Path) -> dict:
    """A metrics file and its timing sidecar merged; {} when the file is absent."""
    if not path.is_file():
        return {}
    data = read_json(path, "metrics file")
    sidecar = timing_path(path)
    return {**(read_json(sidecar, "timing file") if sidecar.is_file() else {}), **data}


def _run_git(metrics_path: Path) -> dict[str, Any] | None:
    """{"commit", "dirty"} the stage ran at, from its timing sidecar's provenance; None without one."""
    sidecar = timing_path(metrics_path)
    volatile = read_json(sidecar, "timing file").get("provenance") if sidecar.is_file() else None
    if not isinstance(volatile, dict) or volatile.get("git_commit") is None:
        return None
    return {"commit": volatile["git_commit"], "dirty": volatile.get("git_dirty")}


def seed_metrics(metrics_dir: Path) -> dict[str, Any]:
    """One seed's figures from its metrics directory."""
    train, pack, calibrate = _load(metrics_dir / "train.json"), _load(metrics_dir / "pack.json"), _load(metrics_dir / "calibrate.json")
    evals = {m: _load(metrics_dir / f"eval_{m}.json") for m in stage_methods()}
    on_ranks = calibrate.get("collected_on") == "train_ranks"
    return {
        "val_bpb": {m: e.get("val_bpb") for m, e in evals.items() if e},
        "val_loss": {m: e.get("val_loss") for m, e in evals.items() if e},
        "bytes_model": pack.get("bytes_model"),
        "steps": train.get("steps"),
        "timing": {
            "train_loop_s": train.get("wallclock_seconds"),
            "hessians_on_train_ranks_s": train.get("calibrate_seconds") if on_ranks else None,
            "calibrate_s": None if on_ranks else calibrate.get("calibrate_time_s"),
            "quantize_s": _load(metrics_dir / "quantize.json").get("quantize_time_s"),
            **{f"eval_{m}_s": e.get("seconds") for m, e in evals.items() if e},
        },
        "provenance": train.get("provenance"),
        "git": _run_git(metrics_dir / "train.json"),
    }


def seed_results(paths: RunPaths, main_seed: int) -> dict[int, dict[str, Any]]:
    """Every seed of the run (the main one first), from metrics/ and data/aggregate/seed-<S>/metrics/."""
    aggregate = _load(paths.metrics / "aggregate.json")
    seeds = [int(s) for s in aggregate.get("seeds") or [main_seed]]
    out = {}
    for seed in seeds:
        directory = paths.metrics if seed == main_seed else paths.aggregate / f"seed-{seed}" / "metrics"
        if not (directory / "pack.json").is_file():
            raise DataError(f"{directory / 'pack.json'}: seed {seed} of {paths.metrics / 'aggregate.json'} has no pack metrics")
        out[seed] = seed_metrics(directory)
    return out


def choose_method(results: dict[int, dict], method: str | None) -> str:
    """The named method, or the one with the lowest mean val_bpb over seeds; every seed must have it."""
    methods = [m for m in stage_methods() if all(m in r["val_bpb"] for r in results.values())]
    if not methods:
        raise DataError("no evaluation method was scored on every seed (metrics/eval_<method>.json)")
    if method is not None:
        if method not in methods:
            raise DataError(f"--method {method}: not scored on every seed (scored: {', '.join(methods)})")
        return method
    return min(methods, key=lambda m: sum(r["val_bpb"][m] for r in results.values()))


def versions() -> dict[str, Any]:
    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"pgolf": __version__, "python": platform.python_version(), "torch": dist("torch")}


VERSION_KEYS = ("pgolf", "python", "torch", "cuda", "driver")


def run_versions(provenance: dict | None) -> dict[str, Any]:
    """The versions the run recorded in its provenance; this process's when it recorded none."""
    if not provenance or provenance.get("torch") is None:
        return versions()
    return {key: provenance.get(key) for key in VERSION_KEYS}


def device_text(provenance: dict | None) -> str | None:
    """"<count>x <device kind>" of a provenance; None when it has no device."""
    device = (provenance or {}).get("device")
    if not isinstance(device, dict) or not device.get("kind"):
        return None
    return f"{device.get('count', 1)}x {device['kind']}"


def run_hardware(results: dict[int, dict]) -> str | None:
    """What the seeds trained on (each distinct device, in seed order); None when no seed recorded one."""
    found = [text for r in results.values() if (text := device_text(r.get("provenance")))]
    return " / ".join(dict.fromkeys(found)) or None


def git_state(root: Path) -> dict[str, Any]:
    """The commit of the checkout and whether its tree has uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", PACKAGE, "params.yaml")
    return {"commit": commit.strip() if commit else None, "dirty": None if status is None else bool(status.strip())}


def submission_record(name: str, date: str, results: dict[int, dict], method: str, program: Program, hardware: str,
                      author: str, github_id: str, root: Path) -> dict[str, Any]:
    seeds = list(results)
    provenance = results[seeds[0]].get("provenance")
    ran = run_versions(provenance)
    bpbs = [results[s]["val_bpb"][method] for s in seeds]
    losses = [results[s]["val_loss"].get(method) for s in seeds]
    stats = summarize(bpbs)
    totals = {s: results[s]["bytes_model"] + program.bytes_code for s in seeds}
    record = {
        "author": author, "github_id": github_id, "name": name, "date": date, "track": TRACK,
        "blurb": f"pgolf run, evaluation method {method}; train_gpt.py generated by `pgolf submission export`.",
        "val_bpb": stats.mean, "val_bpb_std": stats.std,
        "val_loss": summarize(losses).mean if None not in losses else None,
        "eval_method": method, "seeds": seeds,
        "seed_results": {str(s): {"val_bpb": results[s]["val_bpb"][method], "val_bpb_by_method": results[s]["val_bpb"],
                                  "artifact_bytes": totals[s], "bytes_model": results[s]["bytes_model"], "steps": results[s]["steps"],
                                  **{k: v for k, v in results[s]["timing"].items() if v is not None}} for s in seeds},
        "bytes_total": max(totals.values()), "bytes_code": program.bytes_code, "bytes_model": results[seeds[0]]["bytes_model"],
        "artifact_bytes_max": max(totals.values()),
        "hardware": hardware, "pytorch_version": ran["torch"], "versions": ran, "git": results[seeds[0]].get("git") or git_state(root),
    }
    if provenance:
        record["provenance"] = provenance
    return record


def default_hardware(sections: dict[str, Any]) -> str:
    train = sections["train"]
    return f"{train.nproc} process(es), train.device {train.device} (the run does not record the hardware: pass --hardware)"


def export_record(name: str, date: str | None = None, out: str | Path = RECORDS_DIR, paths: RunPaths | None = None,
                  method: str | None = None, author: str = "", github_id: str = "", hardware: str | None = None,
                  limit_bytes: int = LIMIT_BYTES, force: bool = False, package_root: str | Path | None = None) -> Path:
    """Write the record folder; return its path. ArtifactError (one line, nothing written) when
    bytes_model + len(train_gpt.py) of any seed exceeds `limit_bytes`."""
    paths = paths or RunPaths.under(".")
    date = date or dt.date.today().isoformat()
    folder = Path(out) / f"{date}_{name}"
    if folder.exists() and not force:
        raise DataError(f"{folder}: already exists (--force replaces it)")
    sections = load_params(paths.params)
    results = seed_results(paths, sections["train"].seed)
    chosen = choose_method(results, method)
    program = build_program(package_root or Path(__file__).resolve().parents[2], embedded_params(sections))
    worst = max(r["bytes_model"] for r in results.values())
    if worst + program.bytes_code > limit_bytes:
        raise ArtifactError(f"bytes_total {worst + program.bytes_code} (model {worst} + {PROGRAM_NAME} {program.bytes_code}) "
                            f"exceeds {limit_bytes} by {worst + program.bytes_code - limit_bytes} bytes")
    hardware = hardware or run_hardware(results) or default_hardware(sections)
    record = submission_record(name, date, results, chosen, program, hardware, author, github_id, paths.root)
    runtime_code = _load(paths.metrics / "pack.json").get("bytes_code")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / PROGRAM_NAME).write_text(program.text, encoding="utf-8")
    write_json_atomic(folder / "submission.json", record)
    pins = requirements(program.modules)
    (folder / "requirements.txt").write_text(f"# Python {platform.python_version()}; pip install -r requirements.txt\n" + "\n".join(pins) + "\n")
    copy_records(paths, results, folder)
    readme = render_readme(record, config_diff(sections), program, pins, runtime_code, sorted(results[next(iter(results))]["val_bpb"]))
    (folder / "README.md").write_text(readme, encoding="utf-8")
    return folder


def copy_records(paths: RunPaths, results: dict[int, dict], folder: Path) -> None:
    """Every metrics and timing file (per seed) and the training curves, as the run left them."""
    main = next(iter(results))
    for seed in results:
        source = paths.metrics if seed == main else paths.aggregate / f"seed-{seed}" / "metrics"
        target = folder / "metrics" / f"seed-{seed}"
        for path in sorted(source.rglob("*.json")):
            relative = path.relative_to(source)
            if seed == main and relative.parts[0] not in {"timing"} and len(relative.parts) > 1:
                continue  # metrics/plots: plot data, not the run's figures
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative)
    if paths.curves.is_dir():
        shutil.copytree(paths.curves, folder / "train_curves")


def summary_line(folder: Path) -> str:
    record = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
    return (f"{folder}: val_bpb {record['val_bpb']:.5f} ({record['eval_method']}, {len(record['seeds'])} seed(s)), "
            f"bytes_total {record['bytes_total']:,} = model {record['bytes_model']:,} + {PROGRAM_NAME} {record['bytes_code']:,}")
