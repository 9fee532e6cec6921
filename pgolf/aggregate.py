"""Seeds: rerun the model half of the pipeline for extra training seeds, then summarize and test.

The main pipeline is one seed (`train.seed`), which always joins the seed list: the seeds are
`train.seed` followed by the other seeds of `aggregate.seeds`. For each other seed, the library
calls of train, calibrate, quantize, pack and every evaluation stage run again with the same
params (only `train.seed` differs), writing under `data/aggregate/seed-<S>/`; the data stages are
shared (a seed changes training, not the data). Then `metrics/aggregate.json` reports, per
evaluation method, the mean and sample std of val_bpb over all seeds, a one-sided Welch t-test
against the reference given in params (default: the current record, #2135 at 1.05651 bpb) and the
leaderboard's tests of precedence (`tests`, pgolf.stats.precedence: >= 3 seeds; 0.005 nats/token
at p < 0.01; the chronological p < 0.25), in bpb and nats per token. `record_claim_holds` is the
first two together. The file carries its provenance (pgolf.provenance), its timing sidecar the
ledger (phases: seeds).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from pgolf.config.aggregate import AggregateParams
from pgolf.config.base import read_params_file
from pgolf.config.calibrate import CalibrateParams
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.config.train import TrainParams
from pgolf.data.shards import list_shards
from pgolf.errors import DataError
from pgolf.eval.methods import stage_methods
from pgolf.eval.run import eval_stage
from pgolf.io import read_metric, write_json_atomic, write_metrics
from pgolf.ledger import Phases
from pgolf.pack.pack import pack_stage
from pgolf.quant.calibrate import calibrate_stage
from pgolf.quant.stage import quantize_stage
from pgolf.provenance import data_fingerprint, shard_files, stage_provenance
from pgolf.runtime import default_device
from pgolf.stats import Rules, SeedSummary, bpb_to_nats_per_byte, bpb_to_nats_per_token, precedence, summarize, welch_one_sided
from pgolf.train.stage import run_train_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedRun:
    """What one extra seed reruns with: the model-half params and the shared data."""

    train: TrainParams
    calibrate: CalibrateParams
    quantize: QuantizeParams
    pack: PackParams
    evals: dict[str, Any]  # method -> its eval_<method> params
    shards: Path
    tokenizer: Path
    params_path: Path


def seed_order(main_seed: int, seeds: list[int]) -> list[int]:
    """The main seed first, then the other seeds of the list in their order (each once)."""
    return [main_seed, *(s for s in dict.fromkeys(seeds) if s != main_seed)]


def run_extra_seed(seed: int, run: SeedRun, seed_dir: Path) -> dict[str, float]:
    """Train, calibrate, quantize, pack and evaluate one seed in `seed_dir`; {method: val_bpb}."""
    train = run.train.model_copy(update={"seed": seed})
    metrics = seed_dir / "metrics"
    params_file = seed_dir / "params.yaml"  # the run's params, for reading and for torchrun workers
    raw = read_params_file(run.params_path)
    raw["train"] = {**raw.get("train", {}), "seed": seed}
    seed_dir.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    checkpoint = seed_dir / "data/train/checkpoint"
    log.info("seed %d: train", seed)
    argv = ["-m", "pgolf", "train", "--params", str(params_file), "--shards", str(run.shards), "--out", str(seed_dir / "data/train"),
            "--metrics", str(metrics / "train.json"), "--live", ""]
    run_train_stage(train, run.shards, seed_dir / "data/train", metrics / "train.json", None, argv, run.calibrate)
    train_shards = list_shards(run.shards, "train")[:1]
    if not train_shards:
        raise DataError(f"{run.shards}: no training shard to calibrate seed {seed} on")
    log.info("seed %d: calibrate, quantize, pack", seed)
    calibrate_stage(run.calibrate, checkpoint, train_shards, seed_dir / "data/calibrate", metrics / "calibrate.json")
    quantize_stage(run.quantize, checkpoint, seed_dir / "data/calibrate", seed_dir / "data/quantize", metrics / "quantize.json", run.pack)
    pack_stage(run.pack, seed_dir / "data/quantize", seed_dir / "data/pack", metrics / "pack.json", tokenizer=run.tokenizer)
    out = {}
    for method, params in run.evals.items():
        log.info("seed %d: eval_%s", seed, method)
        out[method] = eval_stage(method, params, seed_dir / "data/pack", run.shards, run.tokenizer, checkpoint, metrics / f"eval_{method}.json")["val_bpb"]
    return out


def reference_summary(params: AggregateParams) -> SeedSummary:
    """The reference's seeds: its per-seed values when given, else its mean, std and count."""
    if params.reference_bpb:
        return summarize(params.reference_bpb)
    return SeedSummary(n=params.reference_n, mean=params.reference_mean_bpb, std=params.reference_std_bpb)


def aggregate(params: AggregateParams, main_seed: int, metrics_dir: Path, out_dir: Path, run: SeedRun | None = None) -> dict[str, Any]:
    """Collect val_bpb of the main run and the extra seeds (which need `run`); summarize and test
    against the reference."""
    phases = Phases()
    methods = stage_methods()
    per_seed: dict[int, dict[str, float]] = {
        main_seed: {m: read_metric(metrics_dir / f"eval_{m}.json", "val_bpb") for m in methods}
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = seed_order(main_seed, params.seeds)[1:]
    with phases("seeds"):
        for seed in extra:
            if run is None:
                raise DataError(f"aggregate.seeds asks for seed {seed}: extra seeds need the model-half params and data")
            per_seed[seed] = run_extra_seed(seed, run, out_dir / f"seed-{seed}")
    bytes_per_token = read_metric(metrics_dir / "audit.json", "bytes_per_token")
    reference = reference_summary(params)
    rules = Rules(params.min_seeds, params.min_gain_nats, params.alpha, params.chronological_alpha)
    result: dict[str, Any] = {
        "seeds": list(per_seed),
        "reference": {"mean_bpb": reference.mean, "std_bpb": reference.std, "n": reference.n, "name": params.reference_name,
                      "bpb": list(params.reference_bpb)},
    }
    for method in methods:
        values = [per_seed[s][method] for s in per_seed]
        summary = summarize(values)
        welch = welch_one_sided(summary, reference)
        delta = summary.mean - reference.mean
        tests = precedence(summary, reference, bytes_per_token, rules)
        result[method] = {
            "val_bpb": values,
            "mean_bpb": summary.mean,
            "std_bpb": summary.std,
            "n": summary.n,
            "delta_bpb": delta,
            "delta_nats_per_byte": bpb_to_nats_per_byte(delta),
            "delta_nats_per_token": bpb_to_nats_per_token(delta, bytes_per_token),
            "welch": asdict(welch) if welch else None,
            "tests": tests,
            # A record claim: enough seeds, and shown at p < alpha to be lower by min_gain_nats (nats/token).
            "record_claim_holds": tests["seeds"]["meets"] and tests["record"]["meets"],
        }
    write_json_atomic(out_dir / "per_seed.json", {str(s): v for s, v in per_seed.items()})
    write_metrics(metrics_dir / "aggregate.json", result, phases.ledger(), _provenance(params, run if extra else None))
    return result


def _provenance(params: AggregateParams, run: SeedRun | None):
    """The aggregate's params; with extra seeds, also those they reran with and the shards they read."""
    if run is None:
        return stage_provenance({"aggregate": params}, None, default_device())
    sections = {"aggregate": params, "train": run.train, "calibrate": run.calibrate, "quantize": run.quantize, "pack": run.pack,
                **{f"eval_{m}": p for m, p in run.evals.items()}}
    return stage_provenance(sections, data_fingerprint(shard_files(run.shards), tokenizer=run.tokenizer), default_device())
