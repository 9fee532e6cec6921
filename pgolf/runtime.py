"""The artifact runtime: the code a submission needs to load its artifact and score validation
tokens. `bytes_code` counts exactly the pgolf modules this module imports (transitively), so keep
it small: no training, quantization, tokenizer training or stage plumbing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgolf.bytetable import byte_table, load_processor, load_sidecar, tokenizer_sha256
from pgolf.data.shards import SHARDS_MANIFEST, list_shards, load_tokens
from pgolf.dist import DistInfo
from pgolf.errors import ArtifactError, DataError
from pgolf.eval.accel import precision_context
from pgolf.eval.bpb import ValStream, stream_from_sidecar, stream_from_tokens
from pgolf.eval.methods import METHODS, MethodOutcome
from pgolf.io import read_json
from pgolf.pack.load import load_artifact, model_from_artifact

log = logging.getLogger(__name__)

ARTIFACT_FILE = "model.pgolf"  # the pack stage's file name inside data/pack


def load_val_stream(shards_dir: str | Path, tokenizer_model: str | Path) -> ValStream:
    """All validation shards as one stream. Each target's bytes come from the tokenizer's byte table,
    or from the validation byte sidecar when the shards manifest says `val_byte_sidecar`."""
    shards_dir = Path(shards_dir)
    manifest = read_json(shards_dir / SHARDS_MANIFEST, "shards manifest")
    sp = load_processor(tokenizer_model)
    if manifest.get("vocab_size") != sp.vocab_size():
        raise DataError(f"{shards_dir / SHARDS_MANIFEST}: vocab_size {manifest.get('vocab_size')} != tokenizer {tokenizer_model} ({sp.vocab_size()})")
    paths = list_shards(shards_dir, "val")
    if not paths:
        raise DataError(f"{shards_dir}: no validation shards (fineweb_val_*.bin)")
    tokens, bos_id = load_tokens(paths), int(manifest["bos_id"])
    if manifest.get("val_byte_sidecar"):
        stream = stream_from_sidecar(tokens, load_sidecar(paths), bos_id)
    else:
        stream = stream_from_tokens(tokens, byte_table(sp), bos_id)
    log.info("val_tokens: %d", stream.num_tokens)
    log.info("val_bytes: %d (%s)", int(stream.target_bytes.sum()), "byte sidecar" if manifest.get("val_byte_sidecar") else "byte table")
    return stream


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def artifact_path(path: str | Path) -> Path:
    """An artifact file, or the pack directory holding model.pgolf."""
    path = Path(path)
    return path / ARTIFACT_FILE if path.is_dir() else path


def load_artifact_model(path: str | Path, tokenizer_model: str | Path | None = None, device: torch.device | None = None) -> nn.Module:
    """The model of a packed artifact. With `tokenizer_model`, the artifact must have been made for
    that tokenizer (its sha256 is recorded at pack time): scoring against another vocabulary's
    tokens would print a meaningless bpb."""
    path = artifact_path(path)
    artifact = load_artifact(path)
    if tokenizer_model is not None:
        recorded = artifact.metadata.get("tokenizer_sha256")
        actual = tokenizer_sha256(tokenizer_model)
        if recorded is not None and recorded != actual:
            raise ArtifactError(f"{path}: made for tokenizer sha256 {str(recorded)[:12]}..., not {tokenizer_model} ({actual[:12]}...)")
    return model_from_artifact(artifact, path).to(device or default_device()).eval()


def evaluate_artifact(method: str, model: nn.Module, stream: ValStream, params: Any, info: DistInfo | None = None) -> MethodOutcome:
    """Score `model` on `stream` by the named method of the registry, in the precision its params ask
    for (`params.precision`: the whole method runs in that context); under ranks (`info`) each rank
    scores a share and every rank gets the merged outcome."""
    if method not in METHODS:
        raise DataError(f"unknown evaluation method {method!r} (known: {', '.join(METHODS)})")
    entry = METHODS[method]
    distributed = info is not None and info.distributed
    if distributed and not entry.ranked:
        raise DataError(f"evaluation method {method!r} does not split over ranks: run it with nproc 1")
    with precision_context(params.precision, next(model.parameters()).device):
        if distributed:
            return entry.evaluate(model, stream, params, info)
        return entry.evaluate(model, stream, params)
