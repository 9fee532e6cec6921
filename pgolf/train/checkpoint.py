"""Writing and resuming checkpoints (the reader of the trained model is `pgolf.model.checkpoint`).

Safetensors for tensors, JSON for everything else; no pickle anywhere.

A checkpoint directory holds
  model.safetensors      the weights to use (the EMA weights when train.ema_decay > 0)
  checkpoint.json        model_config, step, tokens_seen, data_position, seed, params, ...
  train_state.safetensors  what resuming needs besides: raw weights (`raw/<name>`, with EMA on)
                         and optimizer state (`optim/<group>/<param>/<key>`)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from pgolf.errors import DataError
from pgolf.io import atomic_dir, read_json, write_json_atomic
from pgolf.model.checkpoint import META_FILE, MODEL_FILE, STATE_FILE, read_tensors
from pgolf.train.data import StreamPosition

CHECKPOINT_FORMAT = 1
@dataclass(frozen=True)
class CheckpointMeta:
    model_config: dict[str, Any]
    step: int
    tokens_seen: int
    data_position: StreamPosition
    seed: int
    ema: bool
    fingerprint: str
    params: dict[str, Any]
    format: int = CHECKPOINT_FORMAT

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["data_position"] = asdict(self.data_position)
        return out

    @staticmethod
    def from_json(obj: dict[str, Any], where: Path) -> CheckpointMeta:
        try:
            if obj["format"] != CHECKPOINT_FORMAT:
                raise DataError(f"{where}: checkpoint format {obj['format']} (expected {CHECKPOINT_FORMAT})")
            return CheckpointMeta(**{**obj, "data_position": StreamPosition(**obj["data_position"])})
        except (KeyError, TypeError) as exc:
            raise DataError(f"{where}: malformed checkpoint metadata ({exc})") from None


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def optimizer_tensors(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for opt in optimizers:
        group = opt.param_groups[0]["group_name"]
        for p, state in opt.state.items():
            for key, value in state.items():
                out[f"optim/{group}/{names[id(p)]}/{key}"] = torch.as_tensor(value)
    return out


def load_optimizer_tensors(model: nn.Module, optimizers: list[torch.optim.Optimizer], tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    by_group = {opt.param_groups[0]["group_name"]: opt for opt in optimizers}
    for key, value in tensors.items():
        if not key.startswith("optim/"):
            continue
        _, group, rest = key.split("/", 2)
        name, state_key = rest.rsplit("/", 1)
        p = params[name]
        target = value if state_key == "step" else value.to(p.device)
        by_group[group].state[p][state_key] = target


def save_checkpoint(
    directory: Path,
    meta: CheckpointMeta,
    weights: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
) -> None:
    """Write a checkpoint directory atomically: readers see the old one or the new one, whole."""
    with atomic_dir(directory) as tmp:
        save_file(_cpu(weights), str(tmp / MODEL_FILE))
        save_file(_cpu(state), str(tmp / STATE_FILE))
        write_json_atomic(tmp / META_FILE, meta.to_json())


def read_meta(directory: str | Path) -> CheckpointMeta:
    directory = Path(directory)
    return CheckpointMeta.from_json(read_json(directory / META_FILE, "checkpoint metadata"), directory / META_FILE)


def read_state(directory: str | Path) -> dict[str, torch.Tensor]:
    return read_tensors(Path(directory) / STATE_FILE)


def fingerprint(params_json: dict[str, Any], data_files: list[Path]) -> str:
    """Identity of a run for resuming: the numerics-relevant params plus the data files' names and sizes."""
    digest = hashlib.sha256(json.dumps(params_json, sort_keys=True).encode())
    for path in data_files:
        digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]
