"""Load a pgolf artifact on CPU: validated container -> integer and float tensors -> a model.

`load_artifact` gives the model config and the weights, each quantized tensor rebuilt by the
shared `pgolf.quant.scheme.QuantizedTensor` (dequantization is written there, once); `load_model_from_artifact`
rebuilds the `pgolf.model.GPT` from them. Every failure is an ArtifactError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.errors import ArtifactError, PgolfError
from pgolf.pack.artifact import ParsedArtifact, StreamEntry, TensorEntry, parse_artifact, read_artifact_bytes
from pgolf.pack.codecs import decompress, unshuffle_bytes
from pgolf.pack.rowrefs import dereference
from pgolf.pack.runs import decode_runs
from pgolf.pack.transforms import SYMBOL_TRANSFORMS
from pgolf.pack.modelconfig import expand_model_config
from pgolf.model import build_model
from pgolf.quant.grids import GRIDS
from pgolf.model.ternary import ternary_group, ternary_latent
from pgolf.quant.scheme import QuantizedTensor

TORCH_DTYPES = {
    "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "bool": torch.bool,
}


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact: `tensors` are the rebuilt weights under every state-dict name."""

    model_config: dict
    tensors: dict[str, torch.Tensor]
    metadata: dict


def decode_symbol_stream(stream: StreamEntry, blob: bytes, entries: list[TensorEntry], referenced: dict[str, int]) -> list[list[np.ndarray]]:
    """Each q tensor's stored matrices in weight orientation: the symbols, or with `referenced`
    row references (name -> child rows) its root rows and child-row differences."""
    parts = []
    for e in entries:
        rows, cols = e.shape
        children = referenced.get(e.name, 0)
        parts.append([(rows - children, cols), (children, cols)] if children else [(rows, cols)])
    shapes = [(c, r) if stream.column else (r, c) for p in parts for r, c in p]
    n = sum(r * c for r, c in shapes)
    transform = SYMBOL_TRANSFORMS[stream.transform] if stream.transform else None
    coded = [(1, transform.length(n, entries[0].bits))] if transform else shapes
    if stream.coder == "ans":
        flat = np.concatenate([m.ravel() for m in decode_runs(blob, coded)])
    else:
        flat = np.frombuffer(decompress(blob, stream.coder, sum(r * c for r, c in coded)), dtype=np.int8)
    if transform:
        flat = transform.decode(flat.view(np.uint8), n, entries[0].bits, GRIDS[entries[0].grid or "symmetric"])
    mats, start = [], 0
    for rows, cols in shapes:
        mats.append(flat[start : start + rows * cols].reshape(rows, cols).copy())
        start += rows * cols
    mats = [np.ascontiguousarray(m.T) if stream.column else m for m in mats]
    out, at = [], 0
    for p in parts:
        out.append(mats[at : at + len(p)])
        at += len(p)
    return out


def decode_byte_stream(stream: StreamEntry, blob: bytes, entries: list[TensorEntry]) -> list[torch.Tensor]:
    """The tensors of a byte stream, exactly as stored."""
    raw = unshuffle_bytes(decompress(blob, stream.coder, sum(e.raw_bytes for e in entries)), stream.shuffle)
    out, start = [], 0
    for e in entries:
        part = bytearray(raw[start : start + e.raw_bytes])
        start += e.raw_bytes
        out.append(torch.frombuffer(part, dtype=TORCH_DTYPES[e.dtype]).reshape(e.shape) if e.numel else torch.zeros(e.shape, dtype=TORCH_DTYPES[e.dtype]))
    return out


PartKey = tuple[str, str, str | None]  # (name, role, part)


def decode_tensors(parsed: ParsedArtifact) -> dict[PartKey, torch.Tensor]:
    """Every stored part decoded (q tensors with row references rebuilt), keyed by (name, role, part)."""
    referenced = {e.name: e.shape[1] for e in parsed.header.tensors if e.role == "refs"}
    out: dict[PartKey, torch.Tensor] = {}
    stored: dict[str, list[np.ndarray]] = {}
    for index, (stream, blob) in enumerate(zip(parsed.header.streams, parsed.blobs)):
        entries = parsed.header.stream_tensors(index)
        if entries[0].role == "q":
            stored.update((e.name, mats) for e, mats in zip(entries, decode_symbol_stream(stream, blob, entries, referenced)))
        else:
            out.update(((e.name, e.role, e.part), t) for e, t in zip(entries, decode_byte_stream(stream, blob, entries)))
    for name, mats in stored.items():
        q = dereference(mats[0], mats[1], out[(name, "refs", None)].numpy()) if len(mats) == 2 else mats[0]
        out[(name, "q", None)] = torch.from_numpy(q)
    return out


def quantized_tensors(parsed: ParsedArtifact, decoded: dict[PartKey, torch.Tensor]) -> dict[str, QuantizedTensor]:
    """The artifact's quantized tensors as the shared `QuantizedTensor`, each checked."""
    extras: dict[str, dict[str, torch.Tensor]] = {}
    for (name, role, part), tensor in decoded.items():
        if role == "extra":
            extras.setdefault(name, {})[part] = tensor
    out: dict[str, QuantizedTensor] = {}
    for entry in parsed.header.tensors:
        if entry.role != "q":
            continue
        qt = QuantizedTensor(entry.name, "", int(entry.bits), decoded[(entry.name, "q", None)], decoded[(entry.name, "scale", None)], entry.out_dtype,
                             extras.get(entry.name, {}), entry.scale_group or 0, entry.grid or "symmetric")
        qt.check()
        out[entry.name] = qt
    return out


def dequantized_state(parsed: ParsedArtifact, decoded: dict[PartKey, torch.Tensor], model_config: dict | None = None) -> dict[str, torch.Tensor]:
    """Weights by name: quantized tensors rebuilt by `QuantizedTensor.dequantize`, plain tensors as stored (cast).
    A ternary model's block matrices (`model_config`: block_linear ternary) are latent weights whose
    ternarization is the stored trits and scales (`ternary_latent`): its layers ternarize again."""
    quantized = quantized_tensors(parsed, decoded)
    state: dict[str, torch.Tensor] = {}
    for entry in parsed.header.tensors:
        if entry.role == "q" and (group := ternary_group(model_config or {}, entry.name)) is not None:
            qt = quantized[entry.name]
            state[entry.name] = ternary_latent(qt.q, qt.scale.float(), group).to(TORCH_DTYPES[entry.out_dtype])
        elif entry.role == "q":
            state[entry.name] = quantized[entry.name].dequantize()
        elif entry.role == "plain":
            tensor = decoded[(entry.name, "plain", None)]
            state[entry.name] = tensor.to(TORCH_DTYPES[entry.out_dtype]) if tensor.is_floating_point() else tensor.clone()
    for alias, target in parsed.header.aliases.items():
        state[alias] = state[target]
    return state


def named(path: str | Path, exc: ArtifactError) -> ArtifactError:
    """The error with the file's path in front (once)."""
    message = str(exc)
    return ArtifactError(message if message.startswith(str(path)) else f"{path}: {message}")


def parse_artifact_file(path: str | Path) -> ParsedArtifact:
    """Read and validate an artifact file; ArtifactError naming the file."""
    try:
        return parse_artifact(read_artifact_bytes(path))
    except ArtifactError as exc:
        raise named(path, exc) from None


def load_artifact(path: str | Path) -> Artifact:
    """Read, validate and decode an artifact; ArtifactError naming the file on any malformed content."""
    parsed = parse_artifact_file(path)
    try:
        return artifact_from_parsed(parsed)
    except ArtifactError as exc:
        raise named(path, exc) from None


def artifact_from_parsed(parsed: ParsedArtifact) -> Artifact:
    decoded = decode_tensors(parsed)
    meta = dict(parsed.header.meta)
    meta["file_bytes"] = parsed.file_bytes
    config = expand_model_config(parsed.header.model_config_, parsed.header.model_config_crc32)
    return Artifact(model_config=config, tensors=dequantized_state(parsed, decoded, config), metadata=meta)


def model_from_artifact(artifact: Artifact, path: str | Path) -> torch.nn.Module:
    """The `pgolf.model.GPT` rebuilt from a loaded artifact's config and weights, on CPU, in eval mode."""
    try:
        model = build_model(artifact.model_config)
    except PgolfError as exc:
        raise ArtifactError(f"{path}: model_config does not build a model ({exc})") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{path}: model_config does not build a model ({type(exc).__name__}: {exc})") from None
    try:
        model.load_state_dict(artifact.tensors, strict=True)
    except RuntimeError as exc:
        # torch lists each problem on its own line after a heading; keep them all on one line.
        lines = [line.strip() for line in str(exc).strip().splitlines()[1:] if line.strip()]
        detail = "; ".join(lines)[:400] or "state dict mismatch"
        raise ArtifactError(f"{path}: weights do not fit the model ({detail})") from None
    return model.eval()


def load_model_from_artifact(path: str | Path) -> torch.nn.Module:
    """The `pgolf.model.GPT` rebuilt from an artifact file, on CPU, in eval mode."""
    return model_from_artifact(load_artifact(path), path)
