"""`pgolf ablate`: an ablation of a profile's options through `dvc exp run`, and its report.

Arms (`pgolf.ablation_options`): leave-one-out (the record stack): "all on" (the profile as committed)
and, per selected option that is on in it, the profile with that option switched off; add-one (the
proposals of issue 15): "baseline" and, per selected proposal, the profile with it switched on. Each
arm runs once per seed (`train.seed`) as the
DVC experiment `<prefix>-<arm>-s<seed>` up to `--target` (default `eval@sliding`). The runs happen in
a temporary git worktree of the commit (`--rev`, default HEAD) that shares the repository's DVC cache
and git refs and runs that commit's code and params.yaml with its profile applied, so the user's
params.yaml and outputs stay as they were, and the experiments show in `dvc exp show` as usual.

Resumable: an experiment already present with the expected params is not run again; one with other
params is an error (remove it or pick another prefix). Timing is not a DVC metric (a seed fixes every
tracked output), so right after each run the train stage's `metrics/timing/train.json` is read from the
worktree and kept beside the report (`<report>-timing.json`), keyed by experiment name and commit.
The report (its section of `docs/ablations.md`, see `pgolf.ablate_report`) is rebuilt from
`dvc exp show --json` after every run, or alone with `--report-only`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pgolf.ablate_report import METRIC, TIMING_FILE, _f, metric, place_section, render_report
from pgolf.ablation_options import Arm, arms, exp_name, mismatch, partition, run_params, select, set_args
from pgolf.errors import PgolfError
from pgolf.io import read_json, write_bytes_atomic, write_json_atomic
from pgolf.profiles import merge

DEFAULT_SEEDS = (1337, 1338, 1339)


@dataclass(frozen=True)
class Plan:
    profile: str
    rev: str  # the baseline commit (full sha)
    base: dict  # params.yaml at rev with the profile merged in
    arms: list[Arm]
    skipped: list[str]  # "<option>: why" for selected options that make no arm
    seeds: list[int]
    prefix: str
    target: str
    command: str  # the canonical command that runs this ablation
    profile_text: str  # the profile file at rev


@dataclass(frozen=True)
class Result:
    rev: str
    params: dict
    metrics: dict  # metrics file -> its data


# ------------------------------------------------------------------------------------- git and dvc
def _run(cmd: list[str], cwd: Path, what: str, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise PgolfError(f"{what} failed ({proc.returncode}): {last}")
    return proc.stdout


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]  # the dvc installed beside pgolf


def repo_root(start: Path) -> Path:
    from pgolf.dvclock import find_dvc_dir

    dvc_dir = find_dvc_dir(start)
    if dvc_dir is None or not (dvc_dir.parent / ".git").exists():
        raise PgolfError("pgolf ablate: not inside a git + DVC repository (no .dvc and .git here or above)")
    return dvc_dir.parent


def git_show(root: Path, rev: str, path: str) -> str:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise PgolfError(f"{path} is not committed at {rev[:7]} (the ablation runs committed code, params and profiles)")
    return proc.stdout


def exp_show(root: Path, rev: str) -> Any:
    try:
        return json.loads(_run(_dvc("exp", "show", "--json", "--rev", rev), root, "dvc exp show --json"))
    except ValueError:
        raise PgolfError("dvc exp show --json: output is not JSON") from None


# ------------------------------------------------------------------------------------------- plan
def resolved(params: dict) -> dict:
    """Every section validated with defaults filled in (ParamsError naming each bad key)."""
    from pgolf.config.sections import SECTIONS, validate_section

    return {name: validate_section(model, params.get(name), name).model_dump(mode="json") for name, model in SECTIONS.items()}


def make_plan(root: Path, profile: str, option_names: list[str], seeds: list[int], prefix: str | None,
              target: str, rev: str = "HEAD") -> Plan:
    """The arms, seeds and base params of an ablation of `profile` at commit `rev` (read with git, not from the workspace)."""
    sha = _run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], root, f"git rev-parse {rev}").strip()
    base = yaml.safe_load(git_show(root, sha, "params.yaml")) or {}
    profile_text = git_show(root, sha, f"profiles/{profile}.yaml")
    merge(base, yaml.safe_load(profile_text) or {})
    try:
        on, skipped = partition(select(option_names), resolved(base))
    except ValueError as exc:
        raise PgolfError(str(exc)) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise PgolfError(f"--seeds: give distinct seeds, got {seeds}")
    prefix = prefix or f"abl-{profile}"
    command = " ".join(["pgolf ablate", profile, "--rev", sha[:7], "--seeds", ",".join(map(str, seeds)), *[f"--option {n}" for n in option_names],
                        *(["--prefix", prefix] if prefix != f"abl-{profile}" else []),
                        *(["--target", target] if target != "eval@sliding" else [])])
    return Plan(profile, sha, base, arms(on), skipped, list(seeds), prefix, target, command, profile_text)


# ------------------------------------------------------------------------------------ experiments
def experiments(exps: Any, rev: str) -> dict[str, Result]:
    """Finished experiments of baseline `rev` in `dvc exp show --json` output, by name."""
    if not isinstance(exps, list):
        raise PgolfError("dvc exp show --json: expected a list of commits")
    out = {}
    for entry in exps:
        if not isinstance(entry, dict) or entry.get("rev") != rev:
            continue
        for exp_range in entry.get("experiments") or []:
            if (exp_range.get("executor") or {}).get("state") not in (None, "success"):
                continue  # queued, running or failed: not a result
            for exp in exp_range.get("revs") or []:
                data = exp.get("data") or {}
                if exp.get("error") or not exp.get("name"):
                    continue
                params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
                metrics = {path: (value or {}).get("data") or {} for path, value in (data.get("metrics") or {}).items()}
                out[exp["name"]] = Result(rev=str(exp.get("rev")), params=params, metrics=metrics)
    return out


def check_params(plan: Plan, found: dict[str, Result]) -> None:
    """An experiment under one of the plan's names must have exactly that run's params."""
    for arm in plan.arms:
        for seed in plan.seeds:
            name = exp_name(plan.prefix, arm.name, seed)
            if name in found and (diff := mismatch(run_params(plan.base, arm, seed), found[name].params)):
                raise PgolfError(f"experiment {name} exists with other params ({'; '.join(diff[:3])}): remove it "
                                 f"(dvc exp remove {name}) or choose another --prefix")


# ------------------------------------------------------------------------------------------ running
def timing_file(report: Path) -> Path:
    return report.with_name(report.stem + "-timing.json")


def write_report(root: Path, plan: Plan, report: Path, alpha: float, found: dict[str, Result] | None = None) -> dict[str, Result]:
    found = experiments(exp_show(root, plan.rev), plan.rev) if found is None else found
    check_params(plan, found)
    timing = read_json(timing_file(report), "timing file") if timing_file(report).is_file() else {}
    report.parent.mkdir(parents=True, exist_ok=True)
    name = timing_file(report).relative_to(root).as_posix() if timing_file(report).is_relative_to(root) else str(timing_file(report))
    existing = report.read_text(encoding="utf-8") if report.is_file() else ""
    section = render_report(plan, found, timing, alpha, name)
    write_bytes_atomic(report, place_section(existing, plan.prefix, section).encode("utf-8"))
    return found


# The stages' `bin/python` runs `.venv/bin/python` when it exists: in the worktree, this interpreter with
# the worktree first on the import path, so stages run the worktree's committed pgolf, not the package
# installed in the environment (an editable install points at the user's checkout).
SHIM = '#!/bin/sh\nPYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}} exec {python} "$@"\n'


class Worktree:
    """A detached git worktree of `rev` in a temporary directory that uses the repository's DVC cache
    and `.cache` and runs its own code (SHIM); removed on exit."""

    def __init__(self, root: Path, rev: str) -> None:
        self.root, self.rev = root, rev
        self.tmp = Path(tempfile.mkdtemp(prefix="pgolf-ablate-"))
        self.path = self.tmp / "worktree"

    def __enter__(self) -> Path:
        try:
            _run(["git", "worktree", "add", "--detach", str(self.path), self.rev], self.root, "git worktree add")
            cache = Path(self.root, _run(_dvc("cache", "dir"), self.root, "dvc cache dir").strip()).resolve()
            _run(_dvc("cache", "dir", "--local", str(cache)), self.path, "dvc cache dir --local")
            shim = self.path / ".venv" / "bin" / "python"  # ignored by git, like any .venv
            shim.parent.mkdir(parents=True)
            shim.write_text(SHIM.format(root=shlex.quote(str(self.path)), python=shlex.quote(sys.executable)), encoding="utf-8")
            shim.chmod(0o755)
            if (self.root / ".cache").is_dir():  # pinned archives and the hub client's cache: no second download
                (self.path / ".cache").symlink_to(self.root / ".cache", target_is_directory=True)
        except BaseException:
            self.__exit__()
            raise
        return self.path

    def __exit__(self, *exc: object) -> None:
        if (self.path / ".cache").is_symlink():
            (self.path / ".cache").unlink()  # never anything of the repository's own .cache
        subprocess.run(["git", "worktree", "remove", "--force", str(self.path)], cwd=self.root, capture_output=True, timeout=300)
        shutil.rmtree(self.tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=self.root, capture_output=True, timeout=60)


def run_plan(root: Path, plan: Plan, report: Path, alpha: float) -> None:
    """Run every missing (arm, seed) of the plan, seed by seed, rewriting the report after each run."""
    found = write_report(root, plan, report, alpha)
    todo = [(arm, seed) for seed in plan.seeds for arm in plan.arms if exp_name(plan.prefix, arm.name, seed) not in found]
    total = len(plan.arms) * len(plan.seeds)
    print(f"ablate: commit {plan.rev[:7]}, profile {plan.profile}: {len(plan.arms)} arms x {len(plan.seeds)} seeds; "
          f"{total - len(todo)} of {total} runs present, {len(todo)} to run", flush=True)
    if not todo:
        return
    _run_all(root, plan, report, alpha, todo)


def _run_all(root: Path, plan: Plan, report: Path, alpha: float, todo: list[tuple[Arm, int]]) -> None:
    from pgolf.profiles import apply_profile

    durations: list[float] = []
    with Worktree(root, plan.rev) as wt:
        logs = wt.parent
        apply_profile(plan.profile, wt / "params.yaml", wt / "profiles")
        base_text = (wt / "params.yaml").read_text(encoding="utf-8")
        for k, (arm, seed) in enumerate(todo, 1):
            name = exp_name(plan.prefix, arm.name, seed)
            print(f"ablate: run {k} of {len(todo)}: {name} ...", flush=True)
            (wt / "params.yaml").write_text(base_text, encoding="utf-8")  # each arm starts from the base
            for stale in (wt / "metrics" / "timing").glob("*.json"):
                stale.unlink()
            start = time.monotonic()
            with open(logs / f"{name}.log", "w", encoding="utf-8") as log:
                code = subprocess.run(_dvc("exp", "run", plan.target, *set_args(plan.base, arm, seed), "-n", name),
                                      cwd=wt, stdout=log, stderr=subprocess.STDOUT).returncode
            seconds = time.monotonic() - start
            if code != 0:
                text = (logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")
                print("\n".join(text.splitlines()[-15:]), file=sys.stderr)
                hint = (" (DVC restored a stage from its run cache and needs the outputs in the commit's dvc.lock in its "
                        "cache: `dvc repro` or `dvc pull` at that commit first)") if "failed to load directory" in text else ""
                with tempfile.NamedTemporaryFile("w", prefix=f"pgolf-ablate-{name}-", suffix=".log", delete=False) as kept:
                    kept.write(text)  # outlives the worktree
                raise PgolfError(f"dvc exp run of {name} failed ({code}); its log: {kept.name}{hint}")
            found = experiments(exp_show(root, plan.rev), plan.rev)
            if name not in found:
                raise PgolfError(f"{name}: dvc exp run succeeded but dvc exp show --rev {plan.rev[:7]} does not list it")
            train = wt / TIMING_FILE
            data = read_json(train, "timing file") if train.is_file() else {}
            timings = read_json(timing_file(report), "timing file") if timing_file(report).is_file() else {}
            timings[name] = {"rev": found[name].rev, "tokens_per_second": data.get("tokens_per_second"),
                             "train_seconds": data.get("wallclock_seconds"), "run_seconds": round(seconds, 1)}
            write_json_atomic(timing_file(report), timings)
            write_report(root, plan, report, alpha, found)
            durations.append(seconds)
            eta = sum(durations) / len(durations) * (len(todo) - k)
            print(f"ablate: run {k} of {len(todo)}: {name}: val_bpb {_f(metric(found[name], METRIC), '.4f')}, "
                  f"{seconds:.0f}s; ETA {eta / 60:.1f} min", flush=True)


# ---------------------------------------------------------------------------------------------- CLI
def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None


def _ablate(args: argparse.Namespace) -> int:
    root = repo_root(Path.cwd())
    plan = make_plan(root, args.profile, args.option or ["record"], args.seeds, args.prefix, args.target, args.rev)
    report = Path(args.out) if Path(args.out).is_absolute() else root / args.out
    if args.dry_run:
        print(f"# {plan.command}\n# commit {plan.rev[:7]}; {len(plan.arms)} arms x {len(plan.seeds)} seeds")
        for arm in plan.arms:
            print(shlex.join(["dvc", "exp", "run", plan.target, *set_args(plan.base, arm, plan.seeds[0]), "-n", exp_name(plan.prefix, arm.name, plan.seeds[0])]))
        for line in plan.skipped:
            print(f"# no arm: {line}")
        return 0
    if args.report_only:
        write_report(root, plan, report, args.alpha)
    else:
        run_plan(root, plan, report, args.alpha)
    print(f"{report}: written" + (f", {timing_file(report).name} beside it" if timing_file(report).is_file() else ""))
    return 0


def add_ablate_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ablate", help="leave-one-out (record stack) or add-one (proposals) ablation of a profile through dvc exp run; writes its section of docs/ablations.md")
    parser.add_argument("profile", help="profile under profiles/ at the commit (all options on)")
    parser.add_argument("--seeds", type=_seeds, default=list(DEFAULT_SEEDS), help="comma-separated train.seed values (default 1337,1338,1339)")
    parser.add_argument("--option", action="append", metavar="NAME",
                        help="an option of pgolf.ablation_options, or a group: record (default), frontier, all (the leave-one-out ones), proposals (add-one; repeatable)")
    parser.add_argument("--target", default="eval@sliding", help="the stage each experiment runs up to (default eval@sliding)")
    parser.add_argument("--prefix", help="experiment names <prefix>-<arm>-s<seed> (default abl-<profile>)")
    parser.add_argument("--rev", default="HEAD", help="the commit whose code, params.yaml and profile run (default HEAD)")
    parser.add_argument("--out", default="docs/ablations.md", help="report path, from the repository root (default docs/ablations.md)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts (default 0.05)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--report-only", action="store_true", help="only regenerate the report from the experiments present")
    mode.add_argument("--dry-run", action="store_true", help="print the runs it would make and stop")
    parser.set_defaults(func=_ablate)
