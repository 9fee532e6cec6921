"""Reading a trained model from a checkpoint directory: the model side of the checkpoint format.

A checkpoint directory (written by `pgolf.train.checkpoint`) holds
  model.safetensors        the weights to use (the EMA weights when train.ema_decay > 0)
  checkpoint.json          model_config, step, seed, params (the train section), ...
  train_state.safetensors  what resuming training needs (optimizer state, raw weights)

This module lives beside the model so that quantization and evaluation read checkpoints without
importing training (its data loader, distribution, optimizers). Safetensors and JSON: no pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pgolf.errors import DataError
from pgolf.io import read_json
from pgolf.model.gpt import GPT, build_model

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
META_FILE = "checkpoint.json"


def read_checkpoint_json(directory: str | Path) -> dict[str, Any]:
    """checkpoint.json as a mapping; DataError naming the file when it is missing or malformed."""
    path = Path(directory) / META_FILE
    info = read_json(path, "checkpoint metadata")
    if not isinstance(info, dict) or not isinstance(info.get("model_config"), dict):
        raise DataError(f"{path}: malformed checkpoint metadata (no model_config object)")
    return info


def read_train_param(directory: str | Path, key: str) -> Any:
    """One value of the `train` params the checkpoint was trained with (None when absent)."""
    params = read_checkpoint_json(directory).get("params")
    return params.get(key) if isinstance(params, dict) else None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file; DataError naming it when it is missing or unreadable."""
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise DataError(f"{path}: unreadable safetensors file ({exc})") from None


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    return read_tensors(Path(directory) / MODEL_FILE)


def load_model(directory: str | Path) -> GPT:
    """The trained model of a checkpoint directory (EMA weights if EMA was on), on CPU, eval mode."""
    directory = Path(directory)
    model = build_model(read_checkpoint_json(directory)["model_config"])
    try:
        model.load_state_dict(read_weights(directory), strict=True)
    except RuntimeError as exc:
        raise DataError(f"{directory / MODEL_FILE}: weights do not match checkpoint.json's model_config ({exc})") from None
    return model.eval()
