"""calibrate: GPTQ Hessians from the trained model run on *training* tokens, never validation.

The stage is given explicit training shard files (DVC deps are those files, not the shard
directory, so validation shards are neither read nor a dependency). A path whose name is not a
training shard's is refused before anything is opened. Windows of `seq_len` tokens are drawn at
seeded random positions from those shards (memory-mapped: only the windows are read).
The metrics carry the provenance (pgolf.provenance: the calibrate section, the shards read); the
timing sidecar `calibrate_time_s` (the stage's seconds, the leaderboard's Hessian reading) and the
ledger (pgolf.ledger: wall_seconds, phases {hessians}: the collection, absent when the training
ranks' Hessians are reused).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pgolf.config.calibrate import CalibrateParams
from pgolf.data.shards import read_shard
from pgolf.errors import DataError
from pgolf.io import atomic_dir, read_json, write_json_atomic, write_metrics
from pgolf.ledger import Phases
from pgolf.model.checkpoint import load_model, read_train_param
from pgolf.provenance import data_fingerprint, stage_provenance
from pgolf.quant.hessian import HessianSet, collect_hessians

log = logging.getLogger(__name__)

TRAIN_SHARD_NAME = re.compile(r"^fineweb_train_\d{6}\.bin$")
HESSIANS_FILE = "hessians.safetensors"
LAYERS_FILE = "hessians.json"


@dataclass(frozen=True)
class CalibrateResult:
    tokens: int
    batches: int
    seq_len: int
    layers: int
    groups: int
    shards: tuple[str, ...]
    calibrate_time_s: float
    collected_on: str = "calibrate_stage"  # or "train_ranks": inside the training budget


SAMPLING_KEYS = ("batches", "batch_seqs", "seq_len", "seed", "head_hessian")


def sampling_of(params: CalibrateParams) -> dict:
    """What fixes a set of Hessians besides the model and the shards: the window sampling."""
    return {key: getattr(params, key) for key in SAMPLING_KEYS}


def resolve_seq_len(params: CalibrateParams, checkpoint_dir: str | Path) -> CalibrateParams:
    """`params` with seq_len filled in (when null) from the checkpoint: the length training ended
    at (the last of train.seq_len_schedule, else train.seq_len)."""
    if params.seq_len is not None:
        return params
    schedule = read_train_param(checkpoint_dir, "seq_len_schedule")
    seq_len = schedule[-1][1] if isinstance(schedule, list) and schedule else read_train_param(checkpoint_dir, "seq_len")
    if not isinstance(seq_len, int):
        raise DataError(f"{checkpoint_dir}: checkpoint.json has no train seq_len; set calibrate.seq_len")
    return params.model_copy(update={"seq_len": seq_len})


def check_train_shards(paths: list[str | Path]) -> list[Path]:
    """The paths, each named like a training shard; DataError (before any read) otherwise."""
    if not paths:
        raise DataError("calibrate needs at least one training shard")
    out = []
    for path in map(Path, paths):
        if not TRAIN_SHARD_NAME.match(path.name):
            raise DataError(f"{path}: not a training shard (fineweb_train_NNNNNN.bin); calibration never reads validation data")
        out.append(path)
    return out


def sample_batches(shards: list[np.ndarray], params: CalibrateParams) -> Iterator[torch.Tensor]:
    """`params.batches` LongTensors [batch_seqs, seq_len] of windows at seeded random positions."""
    if params.seq_len is None:
        raise DataError("calibrate.seq_len is unresolved (null): the stage takes it from the checkpoint")
    usable = [i for i, tokens in enumerate(shards) if tokens.size >= params.seq_len]
    if not usable:
        raise DataError(f"no training shard holds a window of calibrate.seq_len={params.seq_len} tokens")
    sizes = np.array([shards[i].size - params.seq_len + 1 for i in usable], dtype=np.float64)
    rng = np.random.default_rng(params.seed)
    for _ in range(params.batches):
        picks = rng.choice(len(usable), size=params.batch_seqs, p=sizes / sizes.sum())
        rows = []
        for pick in picks:
            start = int(rng.integers(0, int(sizes[pick])))
            rows.append(np.asarray(shards[usable[pick]][start : start + params.seq_len], dtype=np.int64))
        yield torch.from_numpy(np.stack(rows))


def head_input(model: nn.Module) -> dict[str, nn.Module]:
    """{name of the output head's weight: the module whose output it multiplies}, for a tied head
    (the embedding matrix, which no nn.Linear hook sees); {} when the head is an nn.Linear."""
    head = model.head_weight()
    if any(isinstance(mod, nn.Linear) and mod.weight is head for mod in model.modules()):
        return {}
    name = next(name for name, param in model.named_parameters(remove_duplicate=False) if param is head)
    return {name: model.final_norm}


def calibrate_hessians(model: nn.Module, train_shards: list[str | Path], params: CalibrateParams) -> HessianSet:
    """Hessians of every linear layer of `model` (and, with head_hessian, of its tied output head)
    over training windows from `train_shards`."""
    paths = check_train_shards(train_shards)
    shards = [read_shard(p) for p in paths]
    return collect_hessians(model, sample_batches(shards, params), head_input(model) if params.head_hessian else None)


def save_hessians(hs: HessianSet, out_dir: Path, shards: list[str], provenance: dict | None = None) -> None:
    """hessians.safetensors, then hessians.json (layers, tokens, shards and `provenance`: the
    sampling, where and on how many ranks they were collected; no wall-clock figure, so a seed
    fixes the bytes)."""
    save_file({name: h.contiguous() for name, h in hs.hessians.items()}, str(out_dir / HESSIANS_FILE))
    write_json_atomic(out_dir / LAYERS_FILE, {"layers": hs.layers, "tokens": hs.tokens, "shards": shards, **(provenance or {})})


def train_ranks_hessians(checkpoint_dir: str | Path, params: CalibrateParams, shards: list[str]) -> tuple[dict | None, str]:
    """(the hessians.json the train stage wrote into `checkpoint_dir`, "") when it was collected
    with the sampling `params` (seq_len resolved) asks for on `shards`; (None, why not) otherwise."""
    path = Path(checkpoint_dir) / LAYERS_FILE
    if not path.is_file():
        return None, f"{path}: not found (the checkpoint was trained with calibrate.on_train_ranks off, or by older code)"
    info = read_json(path, "Hessians collected on the training ranks")
    wanted = {"sampling": sampling_of(params), "shards": shards}
    for key, value in wanted.items():
        if info.get(key) != value:
            return None, f"{path}: collected with {key} {info.get(key)}, the params ask for {value}"
    return info, ""


def load_hessians(directory: str | Path) -> HessianSet:
    directory = Path(directory)
    info = read_json(directory / LAYERS_FILE, "calibrate output")
    path = directory / HESSIANS_FILE
    if not path.is_file():
        raise DataError(f"{path}: Hessians not found (did the calibrate stage run?)")
    hessians = load_file(str(path))
    missing = sorted(set(info["layers"].values()) - set(hessians))
    if missing:
        raise DataError(f"{path}: missing Hessians for {', '.join(missing[:3])}")
    return HessianSet(hessians=hessians, layers=info["layers"], tokens=int(info["tokens"]))


def calibrate_stage(params: CalibrateParams, checkpoint_dir: str | Path, train_shards: list[str | Path], out_dir: str | Path, metrics_path: str | Path) -> CalibrateResult:
    """The `calibrate` stage: load the checkpoint, collect Hessians, write them and metrics."""
    phases = Phases()
    given = params
    params = resolve_seq_len(params, checkpoint_dir)
    paths = check_train_shards(train_shards)
    names = [p.name for p in paths]
    found, why = train_ranks_hessians(checkpoint_dir, params, names) if params.on_train_ranks else (None, "")
    device = torch.device("cpu")  # the stage computes where load_model puts the model
    if found is not None:
        with atomic_dir(out_dir) as tmp:
            for name in (HESSIANS_FILE, LAYERS_FILE):
                shutil.copyfile(Path(checkpoint_dir) / name, tmp / name)
        hs = load_hessians(out_dir)
        result = CalibrateResult(hs.tokens, params.batches, params.seq_len, len(hs.layers), len(hs.hessians), tuple(names), phases.clock() - phases.started, "train_ranks")
        log.info("Hessians collected on %d training rank(s) right after the loop (their seconds: calibrate_seconds in the train timing)", found["world_size"])
    else:
        if params.on_train_ranks:
            log.warning("%s: collecting them here, outside the training budget", why)
        model = load_model(checkpoint_dir)
        device = next(model.parameters()).device
        with phases("hessians"):
            hs = calibrate_hessians(model, paths, params)
        with atomic_dir(out_dir) as tmp:
            save_hessians(hs, tmp, names, {"sampling": sampling_of(params), "collected_on": "calibrate_stage", "world_size": 1})
        result = CalibrateResult(hs.tokens, params.batches, params.seq_len, len(hs.layers), len(hs.hessians), tuple(names), phases.clock() - phases.started)
    metrics = {k: v for k, v in result.__dict__.items() if k != "calibrate_time_s"} | {"shards": names}
    provenance = stage_provenance({"calibrate": given}, data_fingerprint(paths), device)
    write_metrics(metrics_path, metrics, {"calibrate_time_s": result.calibrate_time_s, **phases.ledger()}, provenance)
    log.info("tokens: %d layers: %d groups: %d calibrate_time_s: %.1f", result.tokens, result.layers, result.groups, result.calibrate_time_s)
    return result
