"""Load a pgolf artifact on CPU: validated container -> integer and float tensors -> a model.

`load_artifact` gives the model config and the dequantized weights; `load_model_from_artifact`
rebuilds the `pgolf.model.GPT` from them. Every failure is an ArtifactError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pgolf.errors import ArtifactError, PgolfError
from pgolf.pack.artifact import ParsedArtifact, TensorEntry, parse_artifact, read_artifact_bytes
from pgolf.pack.codecs import decompress, unshuffle_bytes
from pgolf.pack.entropy import Codebook, decode

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


def decode_blob(entry: TensorEntry, blob: bytes, codebooks: dict[str, Codebook]) -> torch.Tensor:
    """One table entry's tensor, exactly as stored (int8 symbols, float16 scales, plain tensors)."""
    if entry.encoding == "ans":
        values = torch.from_numpy(decode(blob, codebooks[entry.codebook], entry.numel))
        return values.reshape(entry.shape)
    raw = decompress(blob, entry.encoding, entry.raw_bytes)
    if entry.shuffle:
        raw = unshuffle_bytes(raw, _itemsize(entry.dtype))
    buffer = bytearray(raw)
    if entry.numel == 0:
        return torch.zeros(entry.shape, dtype=TORCH_DTYPES[entry.dtype])
    return torch.frombuffer(buffer, dtype=TORCH_DTYPES[entry.dtype]).reshape(entry.shape)


def _itemsize(dtype: str) -> int:
    return torch.empty(0, dtype=TORCH_DTYPES[dtype]).element_size()


def decode_tensors(parsed: ParsedArtifact) -> dict[tuple[str, str], torch.Tensor]:
    """Every blob decoded, keyed by (name, role); q tensors are checked to lie within their bits."""
    codebooks = {}
    for name, cb in parsed.header.codebooks.items():
        codebook = Codebook(cb.min_symbol, tuple(cb.counts))
        codebook.validate()
        codebooks[name] = codebook
    out = {}
    for entry, blob in zip(parsed.header.tensors, parsed.blobs):
        tensor = decode_blob(entry, blob, codebooks)
        if entry.role == "q":
            qmax = 2 ** (entry.bits - 1) - 1
            if tensor.numel() and int(tensor.abs().max()) > qmax:
                raise ArtifactError(f"tensor {entry.name}: symbols exceed +-{qmax} for {entry.bits} bits")
        if entry.role == "scale" and not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(f"tensor {entry.name}: non-finite scales")
        out[(entry.name, entry.role)] = tensor
    return out


def dequantized_state(parsed: ParsedArtifact, decoded: dict[tuple[str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights by name: q * scale per row for quantized tensors, plain tensors as stored (cast)."""
    state: dict[str, torch.Tensor] = {}
    for entry in parsed.header.tensors:
        out_dtype = TORCH_DTYPES[entry.out_dtype]
        if entry.role == "q":
            scale = decoded[(entry.name, "scale")].float().unsqueeze(1)
            state[entry.name] = (decoded[(entry.name, "q")].float() * scale).to(out_dtype)
        elif entry.role == "plain":
            tensor = decoded[(entry.name, "plain")]
            state[entry.name] = tensor.to(out_dtype) if tensor.is_floating_point() else tensor.clone()
    for alias, target in parsed.header.aliases.items():
        state[alias] = state[target]
    return state


def load_artifact(path: str | Path) -> Artifact:
    """Read, validate and decode an artifact; ArtifactError on any malformed content."""
    parsed = parse_artifact(read_artifact_bytes(path))
    return artifact_from_parsed(parsed)


def artifact_from_parsed(parsed: ParsedArtifact) -> Artifact:
    decoded = decode_tensors(parsed)
    meta = dict(parsed.header.meta)
    meta["file_bytes"] = parsed.file_bytes
    return Artifact(model_config=dict(parsed.header.model_config_), tensors=dequantized_state(parsed, decoded), metadata=meta)


def load_model_from_artifact(path: str | Path) -> torch.nn.Module:
    """The `pgolf.model.GPT` rebuilt from an artifact's config and weights, on CPU, in eval mode."""
    from pgolf.model import build_model

    artifact = load_artifact(path)
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
