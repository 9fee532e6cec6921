"""GPTQ calibration on the training ranks (`calibrate.on_train_ranks`): Hessians collected right
after the loop, inside the training budget, each rank running every world_size-th batch of the
calibrate stage's seeded sample, summed over ranks.

Records collect GPTQ Hessians on training data right after the loop and count them in the 600 s
(#2135: 32 batches in 6.9 s; CHALLENGE.md "Rules"). The sampling is the calibrate stage's own
(same params, the first training shard), so the stage can reuse the result; on one process the
Hessians equal the stage's bit for bit on CPU, on several they differ by the order of the sum.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pgolf.config.calibrate import CalibrateParams
from pgolf.data.shards import list_shards, read_shard
from pgolf.dist import DistInfo, max_over_ranks, sum_over_ranks
from pgolf.errors import DataError, ParamsError
from pgolf.quant.calibrate import check_train_shards, head_input, sample_batches, sampling_of, save_hessians
from pgolf.quant.hessian import HessianSet, collect_hessians

log = logging.getLogger(__name__)


def calibration_shards(shards_dir: Path) -> list[Path]:
    """The training shards calibration reads: the first one, as the calibrate stage is declared."""
    paths = list_shards(shards_dir, "train")[:1]
    if not paths:
        raise DataError(f"{shards_dir}: no training shard to calibrate on")
    return check_train_shards(paths)


def check_calibration(params: CalibrateParams, shards_dir: Path, world_size: int) -> None:
    """Before training: ParamsError/DataError when calibration on `world_size` ranks could not run."""
    if params.batches < world_size:
        raise ParamsError(f"calibrate.batches ({params.batches}) must be at least the number of training ranks ({world_size}) with calibrate.on_train_ranks")
    calibration_shards(shards_dir)


def collect_on_ranks(
    model: nn.Module,
    shards_dir: Path,
    params: CalibrateParams,
    seq_len: int,
    info: DistInfo,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[HessianSet, float]:
    """(Hessians of `model` over this rank's share of the sampled windows, summed over ranks; the
    seconds it took, the slowest rank's). `seq_len` replaces a null calibrate.seq_len."""
    check_calibration(params, shards_dir, info.world_size)
    started = time.perf_counter()
    params = params if params.seq_len is not None else params.model_copy(update={"seq_len": seq_len})
    shards = [read_shard(path) for path in calibration_shards(shards_dir)]
    mine = itertools.islice(sample_batches(shards, params), info.rank, None, info.world_size)
    with autocast():
        hs = collect_hessians(
            model,
            (batch.to(info.device) for batch in mine),
            head_input(model) if params.head_hessian else None,
            reduce=lambda tensor: sum_over_ranks(tensor, info),
        )
    seconds = float(max_over_ranks(torch.tensor([time.perf_counter() - started], dtype=torch.float64, device=info.device), info)[0])
    log.info(f"calibration on {info.world_size} rank(s): {hs.tokens} tokens, {len(hs.hessians)} Hessians in {seconds:.1f} s")
    return hs, seconds


def save_rank_hessians(hs: HessianSet, checkpoint_dir: Path, shards_dir: Path, params: CalibrateParams, seq_len: int, world_size: int) -> None:
    """Write the Hessians into the checkpoint directory with the sampling the calibrate stage checks."""
    resolved = params if params.seq_len is not None else params.model_copy(update={"seq_len": seq_len})
    names = [path.name for path in calibration_shards(shards_dir)]
    save_hessians(hs, checkpoint_dir, names, {"sampling": sampling_of(resolved), "collected_on": "train_ranks", "world_size": world_size})
