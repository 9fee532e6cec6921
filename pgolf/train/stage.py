"""The `train` stage and the `pgolf train` command: launch (torchrun when nproc > 1), train, write
the checkpoint under `out/checkpoint`, `metrics/train.json` and the DVCLive curves."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from pgolf.config.train import TrainParams
from pgolf.dist import init_dist, launched_by_torchrun, relaunch_under_torchrun, shutdown
from pgolf.io import write_json_atomic
from pgolf.train.loop import TrainResult, train

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
) -> TrainResult | None:
    """Run the stage in this process, or (nproc > 1, not yet under torchrun) re-exec under torchrun
    with `argv` (the script and its arguments). Returns the result on rank 0, None elsewhere."""
    if params.nproc > 1 and not launched_by_torchrun():
        if argv is None:
            raise ValueError("nproc > 1 needs the command line to relaunch under torchrun")
        relaunch_under_torchrun(params.nproc, argv)
    if params.threads:
        torch.set_num_threads(params.threads)
    info = init_dist(params.device)
    if not info.is_main:
        logging.getLogger("pgolf").setLevel(logging.WARNING)
    log.info(f"device: {info.device} world_size: {info.world_size}")
    try:
        result = train(params, shards, out, info, live)
        if info.is_main:
            write_json_atomic(metrics, result.metrics())
            log.info(f"val_loss: {result.val_loss:.4f} steps: {result.steps} wallclock_seconds: {result.wallclock_seconds:.1f}")
        return result if info.is_main else None
    finally:
        shutdown(info)


def _train_command(args: argparse.Namespace) -> int:
    import sys

    from pgolf.config import load_section

    params = load_section("train", args.params)
    argv = ["-m", "pgolf", *sys.argv[1:]]
    run_train_stage(params, Path(args.shards), Path(args.out), Path(args.metrics), Path(args.live) if args.live else None, argv)
    return 0


def add_train_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train the model per the `train` params (the DVC train stage)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--shards", default=str(DEFAULT_SHARDS))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--metrics", default=str(DEFAULT_METRICS))
    parser.add_argument("--live", default=str(DEFAULT_LIVE), help="DVCLive directory; empty = no curves")
    parser.set_defaults(func=_train_command)
