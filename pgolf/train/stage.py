"""The `train` stage and the `pgolf train` command: train (with nproc > 1, by launching torchrun as a
supervised child), write the checkpoint under `out/checkpoint`, `metrics/train.json` and the
DVCLive curves. The timing sidecar holds the ledger (pgolf.ledger: wall_seconds and the phases
startup, compile_warmup, loop, hessians) and the metrics their provenance (pgolf.provenance).

Stopping: SIGINT/SIGTERM, or the death of this process's parent (DVC killed), make the run save a
resumable checkpoint and exit 130; under torchrun every worker does, and none outlives the stage.
torch is imported only where training happens, so a launching process stays light.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from pgolf.config.calibrate import CalibrateParams
from pgolf.config.train import TrainParams
from pgolf.dist import init_dist, launched_by_torchrun, shutdown
from pgolf.launch import record_worker_error, run_torchrun, watch_parent, worker_stops_quietly
from pgolf.io import read_json, timing_path, write_metrics
from pgolf.provenance import data_fingerprint, shard_files, stage_provenance

if TYPE_CHECKING:
    from pgolf.train.loop import TrainResult

log = logging.getLogger(__name__)

DEFAULT_SHARDS = Path("data/shards")
DEFAULT_OUT = Path("data/train")
DEFAULT_METRICS = Path("metrics/train.json")
DEFAULT_LIVE = Path("dvclive/train")


def run_train_stage(
    params: TrainParams,
    shards: Path = DEFAULT_SHARDS,
    out: Path = DEFAULT_OUT,
    metrics: Path = DEFAULT_METRICS,
    live: Path | None = DEFAULT_LIVE,
    argv: list[str] | None = None,
    calibration: CalibrateParams | None = None,
) -> TrainResult | None:
    """Run the stage. In this process, or (nproc > 1, not yet under torchrun) in `nproc` workers
    that torchrun starts with `argv` (the script and its arguments), waiting for them. With
    `calibration` whose on_train_ranks is on, GPTQ Hessians are collected on the training ranks
    right after the loop and written into the checkpoint (pgolf/train/calibration.py).

    Returns the result (read back from `metrics` after torchrun), None on ranks other than 0.
    KeyboardInterrupt when stopped, after the resumable checkpoint is saved.
    """
    if params.world_size > 1 and not launched_by_torchrun():
        if argv is None:
            raise ValueError("nproc > 1 needs the command line that torchrun runs in each worker")
        run_torchrun(params.nproc, argv, params.nnodes, params.node_rank, params.rdzv_endpoint)
        if params.node_rank:
            logging.getLogger("pgolf.train").info("node %d of %d: done; node 0 wrote the outputs", params.node_rank, params.nnodes)
            return None
        return _result_from(metrics)
    with watch_parent():
        if launched_by_torchrun():
            with worker_stops_quietly():
                return _train_here(params, shards, out, metrics, live, calibration)
        return _train_here(params, shards, out, metrics, live, calibration)


def _train_here(params: TrainParams, shards: Path, out: Path, metrics: Path, live: Path | None, calibration: CalibrateParams | None) -> TrainResult | None:
    import torch

    from pgolf.train.loop import train

    started = time.perf_counter()
    if params.threads:
        torch.set_num_threads(params.threads)
    info = init_dist(params.device)
    if not info.is_main:
        logging.getLogger("pgolf").setLevel(logging.WARNING)
    log.info(f"device: {info.device} world_size: {info.world_size}")
    try:
        result = train(params, shards, out, info, live, calibration if calibration is not None and calibration.on_train_ranks else None)
        if info.is_main:
            sections = {"train": params, **({"calibrate": calibration} if calibration is not None else {})}
            provenance = stage_provenance(sections, data_fingerprint(shard_files(shards)), info.device, info.world_size)
            write_metrics(metrics, result.metrics(), {**result.timing(), "wall_seconds": time.perf_counter() - started}, provenance)
            log.info(f"val_loss: {result.val_loss:.4f} steps: {result.steps} wallclock_seconds: {result.wallclock_seconds:.1f}")
        return result if info.is_main else None
    except Exception as exc:
        record_worker_error(exc)  # under torchrun, before the peers lose their connection to us
        raise
    finally:
        shutdown(info)


def _result_from(metrics: Path) -> TrainResult:
    from pgolf.train.loop import TrainResult

    data = {**read_json(metrics, "train metrics"), **read_json(timing_path(metrics), "train timing")}
    return TrainResult(**{f.name: data[f.name] for f in fields(TrainResult)})


def _train_command(args: argparse.Namespace) -> int:
    import sys

    from pgolf.config.base import load_section_as

    params = load_section_as(TrainParams, "train", args.params)
    calibration = load_section_as(CalibrateParams, "calibrate", args.params)
    argv = ["-m", "pgolf", *sys.argv[1:]]
    run_train_stage(params, Path(args.shards), Path(args.out), Path(args.metrics), Path(args.live) if args.live else None, argv, calibration)
    return 0


def add_train_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train the model per the `train` params (the DVC train stage; with calibrate.on_train_ranks also the GPTQ Hessians)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--shards", default=str(DEFAULT_SHARDS))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--metrics", default=str(DEFAULT_METRICS))
    parser.add_argument("--live", default=str(DEFAULT_LIVE), help="DVCLive directory; empty = no curves")
    parser.set_defaults(func=_train_command)
