"""Seeds: rerun the model half of the pipeline for extra training seeds, then summarize and test.

The main pipeline is one seed (`train.seed`). For each other seed in `aggregate.seeds`, the stages
`SEED_STAGES` run again with exactly the commands of dvc.yaml, rewritten to read a per-seed params
file (only `train.seed` differs) and to write under `data/aggregate/seed-<S>/`. The data stages
(fetch, tokenizer, export, audit) are shared: a seed changes training, not the data. Then
`metrics/aggregate.json` reports, per evaluation method, the mean and sample std of val_bpb over all
seeds and a one-sided Welch t-test against the reference given in params (default: the official
baseline, 1.2244 bpb).
"""

from __future__ import annotations

import copy
import logging
import re
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from pgolf.config import read_params_file
from pgolf.config.aggregate import AggregateParams
from pgolf.errors import DataError, PgolfError
from pgolf.io import read_metric, write_json_atomic
from pgolf.stats import SeedSummary, bpb_to_nats_per_byte, bpb_to_nats_per_token, summarize, welch_one_sided

log = logging.getLogger(__name__)

SEED_STAGES = ("train", "calibrate", "quantize", "pack", "eval_sliding", "eval_ttt")
PER_SEED_PREFIXES = ("data/train", "data/calibrate", "data/quantize", "data/pack", "metrics/", "dvclive/")
METHOD_METRICS = {"sliding": "eval_sliding.json", "ttt": "eval_ttt.json"}
_INTERPOLATION = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DataError(f"dvc.yaml interpolates ${{{dotted}}}, which params.yaml does not define")
        node = node[part]
    return node


def seed_commands(dvc_yaml: dict[str, Any], params: dict[str, Any], seed_dir: Path, params_file: Path) -> list[str]:
    """The dvc.yaml commands of SEED_STAGES, rewritten to run one seed in `seed_dir`."""
    stages = dvc_yaml.get("stages", {})
    commands = []
    for name in SEED_STAGES:
        if name not in stages or "cmd" not in stages[name]:
            raise DataError(f"dvc.yaml has no stage {name!r} with a cmd; aggregate reruns it per seed")
        cmd = stages[name]["cmd"]
        cmd = _INTERPOLATION.sub(lambda m: str(_lookup(params, m.group(1))), cmd)
        words = []
        for word in shlex.split(cmd):
            for prefix in PER_SEED_PREFIXES:
                if word.startswith(prefix):
                    word = str(seed_dir / word)
                    break
            words.append(word)
        words += ["--params", str(params_file)]
        commands.append(shlex.join(words))
    return commands


def run_extra_seed(seed: int, root: Path, out_dir: Path) -> dict[str, float]:
    """Run SEED_STAGES for one seed; return {method: val_bpb}."""
    params = read_params_file(root / "params.yaml")
    seed_params = copy.deepcopy(params)
    seed_params.setdefault("train", {})["seed"] = seed
    seed_dir = out_dir / f"seed-{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    params_file = seed_dir / "params.yaml"
    params_file.write_text(yaml.safe_dump(seed_params, sort_keys=False), encoding="utf-8")
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    for cmd in seed_commands(dvc_yaml, seed_params, seed_dir, params_file):
        log.info("seed %d: %s", seed, cmd)
        words = shlex.split(cmd)
        if words and words[0] == "python":
            words[0] = sys.executable
        proc = subprocess.run(words, cwd=root)
        if proc.returncode != 0:
            raise PgolfError(f"seed {seed}: `{cmd}` failed with exit status {proc.returncode}")
    return {m: read_metric(seed_dir / "metrics" / f, "val_bpb") for m, f in METHOD_METRICS.items()}


def aggregate(params: AggregateParams, main_seed: int, root: Path, metrics_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Collect val_bpb of the main run and the extra seeds; summarize and test against the reference."""
    if main_seed not in params.seeds:
        raise DataError(f"aggregate.seeds {params.seeds} must include the main run's seed train.seed={main_seed}")
    out_dir.mkdir(parents=True, exist_ok=True)
    per_seed: dict[int, dict[str, float]] = {
        main_seed: {m: read_metric(metrics_dir / f, "val_bpb") for m, f in METHOD_METRICS.items()}
    }
    for seed in params.seeds:
        if seed != main_seed:
            per_seed[seed] = run_extra_seed(seed, root, out_dir)
    bytes_per_token = read_metric(metrics_dir / "audit.json", "bytes_per_token")
    reference = SeedSummary(n=params.reference_n, mean=params.reference_mean_bpb, std=params.reference_std_bpb)
    result: dict[str, Any] = {
        "seeds": sorted(per_seed),
        "reference": {"mean_bpb": reference.mean, "std_bpb": reference.std, "n": reference.n, "name": params.reference_name},
    }
    for method in METHOD_METRICS:
        values = [per_seed[s][method] for s in sorted(per_seed)]
        summary = summarize(values)
        welch = welch_one_sided(summary, reference)
        delta = summary.mean - reference.mean
        gain_nats_per_token = -bpb_to_nats_per_token(delta, bytes_per_token)
        result[method] = {
            "val_bpb": values,
            "mean_bpb": summary.mean,
            "std_bpb": summary.std,
            "n": summary.n,
            "delta_bpb": delta,
            "delta_nats_per_byte": bpb_to_nats_per_byte(delta),
            "delta_nats_per_token": bpb_to_nats_per_token(delta, bytes_per_token),
            "welch": asdict(welch) if welch else None,
            # A record claim: lower by at least min_gain_nats (nats/token) with p < alpha.
            "record_claim_holds": bool(
                welch is not None and welch.p_value < params.alpha and gain_nats_per_token >= params.min_gain_nats
            ),
        }
    write_json_atomic(out_dir / "per_seed.json", {str(s): v for s, v in sorted(per_seed.items())})
    write_json_atomic(metrics_dir / "aggregate.json", result)
    return result
