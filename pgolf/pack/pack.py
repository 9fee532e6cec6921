"""pack: a QuantizedModel -> artifact bytes, byte accounting, and the 16,000,000-byte gate.

Integer symbols go into *symbol streams*, one per `pack.distribution` unit (a tensor group, a
role across layers such as every layer's ``attn.c_q.weight``, or a single tensor), each matrix
transposed first when `pack.layout` is column (the records' per-group layout, PR #1586). A
stream is coded by the smallest of the coders `SYMBOL_CODERS[pack.compressor]` names: `ans`
(`pgolf.pack.runs`: up to `pack.ans_clusters` distributions, one class per run) or a general
codec of the stream's bytes, after `pack.transform` where it applies (`pgolf.pack.transforms`:
ternary trits 5 per byte, Gray-coded bit packing). With `pack.row_refs`, near-duplicate rows are stored as differences
from a similar row (`pgolf.pack.rowrefs`). Scales, extras and passthrough tensors are packed together, one
*byte stream* per dtype (byte-shuffled if `pack.shuffle`), coded by `pack.side_codec`. Every part
of a `QuantizedTensor` is stored generically: a new kind of extra needs no change here.
The stage's metrics carry the provenance (pgolf.provenance: the pack section, the tokenizer's
sha256); its timing sidecar the ledger (pgolf.ledger: wall_seconds, phases {compress}).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pgolf.bytetable import tokenizer_sha256
from pgolf.config.pack import PackParams
from pgolf.errors import ArtifactError
from pgolf.io import atomic_dir, write_metrics
from pgolf.ledger import Phases
from pgolf.pack.accounting import EntropyBound, entropy_bound, group_symbols
from pgolf.pack.artifact import encode_artifact
from pgolf.pack.cluster_fit import fit_classes
from pgolf.pack.code_bytes import measure_code_bytes
from pgolf.pack.codecs import SYMBOL_CODERS, compress, shuffle_bytes
from pgolf.pack.entropy import order0_entropy_bits
from pgolf.pack.modelconfig import compact_model_config
from pgolf.pack.reference_fit import fit_references
from pgolf.pack.rowrefs import reference
from pgolf.pack.runs import BLOB_HEAD, encode_runs
from pgolf.pack.transforms import SYMBOL_TRANSFORMS
from pgolf.provenance import data_fingerprint, stage_provenance
from pgolf.quant.apply import QuantizedModel, dtype_name, summarize_report
from pgolf.quant.grids import GRIDS
from pgolf.quant.store import load_quantized

log = logging.getLogger(__name__)

ARTIFACT_NAME = "model.pgolf"
REFERENCE_BROTLI_QUALITY = 11
LAYER_INDEX = re.compile(r"\.\d+(?=\.)")

# pack.distribution: the unit of a symbol stream, from a tensor's name and group.
STREAM_UNITS: dict[str, Callable[[str, str], str]] = {
    "group": lambda name, group: group,
    "role": lambda name, group: f"{group}/{LAYER_INDEX.sub('', name)}",  # blocks.3.attn.c_q.weight -> blocks.attn.c_q.weight
    "tensor": lambda name, group: name,
}


@dataclass(frozen=True)
class PackedModel:
    """Artifact bytes plus the accounting of where they go."""

    data: bytes
    groups: dict[str, dict]
    bytes_symbols: int
    entropy_bytes: float
    bytes_side: int = 0
    bytes_container: int = 0
    bound: EntropyBound = field(default_factory=lambda: EntropyBound(0.0, 0))
    streams: tuple[dict, ...] = ()

    @property
    def bytes_model(self) -> int:
        return len(self.data)


def codec_level(codec: str, params: PackParams) -> int:
    return {"zstd": params.zstd_level, "brotli": params.brotli_quality, "lzma": params.lzma_preset}.get(codec, 0)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Little-endian bytes of a CPU tensor (bfloat16 through its 16-bit pattern)."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    array = t.numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def stored_matrices(qm: QuantizedModel, names: list[str], column: bool, refs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The stream's int8 matrices in stored orientation (transposed when column-major); a tensor
    with row references contributes its root rows and its child-row differences."""
    mats = []
    for name in names:
        q = qm.quantized[name].q.numpy()
        mats.extend(reference(q, refs[name]) if name in refs else (q,))
    return [np.ascontiguousarray(m.T if column else m) for m in mats]


def stream_transform(qm: QuantizedModel, names: list[str], mats: list[np.ndarray], params: PackParams, refs: dict[str, np.ndarray]) -> str | None:
    """`pack.transform` where it applies to this stream (shared bits and grid, no row references), else None."""
    if params.transform == "none" or any(name in refs for name in names):
        return None
    kinds = {(qm.quantized[name].bits, qm.quantized[name].grid) for name in names}
    if len(kinds) != 1:
        return None
    bits, grid = kinds.pop()
    flat = np.concatenate([m.ravel() for m in mats]) if mats else np.zeros(0, dtype=np.int8)
    return params.transform if SYMBOL_TRANSFORMS[params.transform].applies(flat, bits, GRIDS[grid]) else None


def stream_candidates(qm: QuantizedModel, names: list[str], params: PackParams, refs: dict[str, np.ndarray]) -> tuple[str | None, dict[str, bytes]]:
    """(the transform applied or None, each coder's blob) of one symbol stream."""
    mats = stored_matrices(qm, names, params.layout == "column", refs)
    transform = stream_transform(qm, names, mats, params, refs)
    if transform is not None:
        qt = qm.quantized[names[0]]
        flat = np.concatenate([m.ravel() for m in mats])
        mats = [SYMBOL_TRANSFORMS[transform].encode(flat, qt.bits, GRIDS[qt.grid]).view(np.int8)[None, :]]
    return transform, symbol_candidates(mats, params)


def symbol_candidates(mats: list[np.ndarray], params: PackParams) -> dict[str, bytes]:
    """Each coder of `SYMBOL_CODERS[pack.compressor]` -> its blob of the stream."""
    out = {}
    for coder in SYMBOL_CODERS[params.compressor]:
        if coder == "ans":
            classes, clusters = fit_classes(mats, params.ans_clusters)
            out[coder] = encode_runs(mats, classes, clusters)
        else:
            out[coder] = compress(b"".join(m.tobytes() for m in mats), coder, codec_level(coder, params))
    return out


def side_parts(qm: QuantizedModel, refs: dict[str, np.ndarray]) -> list[tuple[dict, torch.Tensor]]:
    """(table entry without stream, tensor) of every scale, extra, row references and passthrough, in model order."""
    parts = []
    for name in qm.dtypes:
        out_dtype = out_dtype_of(qm, name)
        if name in qm.quantized:
            qt = qm.quantized[name]
            parts.append(({"name": name, "role": "scale", "shape": list(qt.scale_shape()), "dtype": "float16", "out_dtype": out_dtype}, qt.scale.half()))
            for part, tensor in qt.extras.items():
                parts.append(({"name": name, "role": "extra", "part": part, "shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype), "out_dtype": out_dtype}, tensor))
            if name in refs:
                parts.append(({"name": name, "role": "refs", "shape": list(refs[name].shape), "dtype": "int32", "out_dtype": out_dtype}, torch.from_numpy(refs[name])))
        else:
            tensor = qm.passthrough[name]
            parts.append(({"name": name, "role": "plain", "shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype), "out_dtype": out_dtype}, tensor))
    return parts


def out_dtype_of(qm: QuantizedModel, name: str) -> str:
    return qm.dtypes[name] if qm.dtypes[name] in ("float16", "bfloat16", "float32") else "float32"


def pack_model(qm: QuantizedModel, params: PackParams, meta: dict | None = None) -> PackedModel:
    """Encode every tensor of `qm` into one artifact (bytes)."""
    units: dict[str, list[str]] = {}
    for name, qt in qm.quantized.items():
        units.setdefault(STREAM_UNITS[params.distribution](name, qt.group), []).append(name)
    column = params.layout == "column"
    refs = {}
    for name, qt in qm.quantized.items():
        found = fit_references(qt.q.numpy(), qt.bits) if params.row_refs else np.zeros((2, 0))
        if found.shape[1]:
            refs[name] = found
    streams, entries, blobs, accounts = [], [], [], []
    for names in units.values():
        transform, candidates = stream_candidates(qm, names, params, refs)
        coder = min(candidates, key=lambda c: len(candidates[c]))  # the first on ties
        index = len(streams)
        streams.append(({"coder": coder, "column": column} if column else {"coder": coder}) | ({"transform": transform} if transform else {}))
        blobs.append(candidates[coder])
        group = qm.quantized[names[0]].group
        accounts.append({"group": group, "coder": coder, "bytes": len(candidates[coder]), "ans_bytes": len(candidates["ans"]) if "ans" in candidates else None,
                         "model_bytes": model_section_bytes(candidates[coder]) if coder == "ans" else 0})
        for name in names:
            qt = qm.quantized[name]
            entries.append({"name": name, "role": "q", "shape": list(qt.q.shape), "dtype": "int8", "out_dtype": out_dtype_of(qm, name), "bits": qt.bits, "stream": index}
                           | ({"scale_group": qt.scale_group} if qt.scale_group else {}) | ({"grid": qt.grid} if qt.grid != "symmetric" else {}))
    side_bytes = 0
    by_dtype: dict[str, list[tuple[dict, torch.Tensor]]] = {}
    for entry, tensor in side_parts(qm, refs):
        by_dtype.setdefault(entry["dtype"], []).append((entry, tensor))
    side_share: dict[tuple[str, str], float] = {}
    for dtype, parts in by_dtype.items():
        itemsize = parts[0][1].element_size()
        raw = b"".join(tensor_bytes(t) for _, t in parts)
        shuffle = itemsize if params.shuffle and params.side_codec != "raw" and itemsize > 1 else 1
        blob = compress(shuffle_bytes(raw, shuffle), params.side_codec, codec_level(params.side_codec, params))
        index = len(streams)
        streams.append({"coder": params.side_codec, "shuffle": shuffle} if shuffle > 1 else {"coder": params.side_codec})
        blobs.append(blob)
        side_bytes += len(blob)
        for entry, tensor in parts:
            entries.append({**entry, "stream": index})
            key = (qm.quantized[entry["name"]].group if entry["name"] in qm.quantized else "passthrough", entry["role"])
            side_share[key] = side_share.get(key, 0.0) + len(blob) * len(tensor_bytes(tensor)) / max(len(raw), 1)
    config, config_crc32 = compact_model_config(qm.model_config)
    data = encode_artifact(config, meta or {}, dict(qm.aliases), streams, entries, blobs, config_crc32)
    bytes_symbols = sum(a["bytes"] for a in accounts)
    bound = entropy_bound(qm)
    groups = group_accounting(qm, accounts, side_share, params.reference_brotli)
    stream_rows = tuple({**s, "bytes": len(b)} for s, b in zip(streams, blobs))
    return PackedModel(data, groups, bytes_symbols, bound.symbol_bytes, side_bytes, len(data) - sum(len(b) for b in blobs), bound, stream_rows)


def model_section_bytes(blob: bytes) -> int:
    """Bytes of an `ans` stream that are its model (head, counts, classes), not coded symbols."""
    return BLOB_HEAD.size + struct.unpack_from("<I", blob, BLOB_HEAD.size - 4)[0]


def group_accounting(qm: QuantizedModel, accounts: list[dict], side_share: dict[tuple[str, str], float], reference_brotli: bool) -> dict[str, dict]:
    errors = summarize_report(qm.report)
    groups = {}
    for group, symbols in group_symbols(qm).items():
        mine = [a for a in accounts if a["group"] == group]
        entropy_bits = order0_entropy_bits(symbols)
        coded = sum(a["bytes"] for a in mine)
        bits = sorted({qt.bits for qt in qm.quantized.values() if qt.group == group})
        encodings: dict[str, int] = {}
        for a in mine:
            encodings[a["coder"]] = encodings.get(a["coder"], 0) + 1
        groups[group] = {
            "bits": bits[0] if len(bits) == 1 else bits,
            "symbols": int(symbols.size),
            "streams": len(mine),
            "entropy_bits": entropy_bits,
            "entropy_bytes": entropy_bits / 8,
            "packed_bytes": coded,
            "codebook_bytes": sum(a["model_bytes"] for a in mine),
            "packed_to_entropy": coded / (entropy_bits / 8) if entropy_bits else None,
            "ans_bytes": sum(a["ans_bytes"] for a in mine) if all(a["ans_bytes"] is not None for a in mine) else None,
            "encodings": encodings,
            "scale_bytes": round(side_share.get((group, "scale"), 0.0)),  # side streams are shared: bytes attributed by raw size
            "extras_bytes": round(side_share.get((group, "extra"), 0.0)),
            "brotli11_bytes": len(compress(symbols.tobytes(), "brotli", REFERENCE_BROTLI_QUALITY)) if reference_brotli else None,
            "quant_error": errors.get(group, {}),
        }
    return groups


@dataclass(frozen=True)
class PackReport:
    artifact: str
    bytes_model: int
    bytes_code: int
    bytes_total: int
    limit_bytes: int


def pack_metrics(packed: PackedModel, params: PackParams) -> dict:
    """The whole-model accounting of an artifact (metrics/pack.json without the code part)."""
    bound = packed.bound.total_bytes
    return {
        "bytes_symbols": packed.bytes_symbols,
        "bytes_side": packed.bytes_side,
        "bytes_container": packed.bytes_container,
        "container_fraction": packed.bytes_container / packed.bytes_model,
        "entropy_bytes": packed.entropy_bytes,
        "entropy_bound_bytes": bound,
        "model_to_entropy_bound": packed.bytes_model / bound if bound else None,
        "symbols_to_entropy": packed.bytes_symbols / packed.entropy_bytes if packed.entropy_bytes else None,
        "brotli11_symbol_bytes": sum(g["brotli11_bytes"] for g in packed.groups.values()) if params.reference_brotli else None,
        "compressor": params.compressor,
        "streams": list(packed.streams),
        "groups": packed.groups,
    }


def check_total(bytes_model: int, bytes_code: int, limit: int) -> int:
    """bytes_total; an ArtifactError (one line) over the limit."""
    total = bytes_model + bytes_code
    if total > limit:
        raise ArtifactError(f"bytes_total {total} (model {bytes_model} + code {bytes_code}) exceeds pack.limit_bytes {limit} by {total - limit} bytes")
    return total


def pack_stage(params: PackParams, quantized_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
               repo_root: str | Path = ".", tokenizer: str | Path | None = None, code_bytes: int | None = None) -> PackReport:
    """The `pack` stage: artifact into `out_dir`, metrics JSON; fails over the byte limit. With
    `tokenizer`, the artifact records its sha256 and evaluation refuses any other tokenizer. The
    code counted is `code_bytes` (a submission's own program), or when None pack.code_modules
    measured under `repo_root`."""
    phases = Phases()
    qm = load_quantized(quantized_dir)
    meta: dict = {}
    if tokenizer is not None:
        meta["tokenizer_sha256"] = tokenizer_sha256(tokenizer)
    with phases("compress"):
        packed = pack_model(qm, params, meta)
    if code_bytes is None:
        measured = measure_code_bytes(params.code_modules, repo_root)
        code_bytes = measured.bytes_code
        code = {"modules": list(params.code_modules), "files": list(measured.files), "bytes_raw": measured.bytes_raw, "codec": "lzma-9e"}
    else:
        code = {"given_bytes": code_bytes}  # the caller's program, counted whole
    out_dir = Path(out_dir)
    artifact_path = out_dir / ARTIFACT_NAME
    log.info("bytes_model: %d bytes_code: %d bytes_total: %d limit_bytes: %d", packed.bytes_model, code_bytes, packed.bytes_model + code_bytes, params.limit_bytes)
    try:
        total = check_total(packed.bytes_model, code_bytes, params.limit_bytes)
    except ArtifactError:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        raise
    with atomic_dir(out_dir) as tmp:
        (tmp / ARTIFACT_NAME).write_bytes(packed.data)
    report = PackReport(os.path.relpath(artifact_path, repo_root), packed.bytes_model, code_bytes, total, params.limit_bytes)
    metrics = {**report.__dict__, **pack_metrics(packed, params), "code": code}
    data = data_fingerprint([], tokenizer=tokenizer) if tokenizer is not None else None
    write_metrics(metrics_path, metrics, phases.ledger(), stage_provenance({"pack": params}, data))
    return report
