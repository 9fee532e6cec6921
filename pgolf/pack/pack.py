"""pack: a QuantizedModel -> artifact bytes, byte accounting, and the 16,000,000-byte gate.

Integer symbols are coded by `pack.compressor` (a name of `pgolf.pack.codecs.SYMBOL_CODERS`):
`ans` fits one distribution per tensor group (or per tensor) to the symbols and entropy-codes them;
zstd/brotli/lzma/raw code the int8 bytes; `best` keeps, per tensor, the smallest of ANS, brotli
and lzma. Scales, extras and passthrough tensors go through `pack.side_codec`, byte-shuffled if
`pack.shuffle`. Every part of a `QuantizedTensor` is stored generically: a new kind of extra
needs no change here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.bytetable import tokenizer_sha256
from pgolf.config.pack import PackParams
from pgolf.errors import ArtifactError
from pgolf.io import atomic_dir, write_json_atomic
from pgolf.pack.artifact import encode_artifact
from pgolf.pack.code_bytes import measure_code_bytes
from pgolf.pack.codecs import SYMBOL_CODERS, compress, shuffle_bytes
from pgolf.pack.entropy import Codebook, encode, fit_codebook, order0_entropy_bits
from pgolf.quant.apply import QuantizedModel, dtype_name, summarize_report
from pgolf.quant.scheme import QuantizedTensor
from pgolf.quant.store import load_quantized

log = logging.getLogger(__name__)

ARTIFACT_NAME = "model.pgolf"
REFERENCE_BROTLI_QUALITY = 11


@dataclass(frozen=True)
class PackedModel:
    """Artifact bytes plus the per-group accounting of its integer symbols (packed bytes of a group
    include its ANS codebook)."""

    data: bytes
    groups: dict[str, dict]
    bytes_symbols: int
    entropy_bytes: float

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


def side_blob(tensor: torch.Tensor, params: PackParams) -> tuple[bytes, dict]:
    raw = tensor_bytes(tensor)
    shuffle = params.shuffle and params.side_codec != "raw" and tensor.element_size() > 1
    if shuffle:
        raw = shuffle_bytes(raw, tensor.element_size())
    return compress(raw, params.side_codec, codec_level(params.side_codec, params)), {"encoding": params.side_codec, "shuffle": shuffle}


def fit_codebooks(qm: QuantizedModel, by_group: dict[str, list[np.ndarray]], params: PackParams) -> dict[str, Codebook]:
    """ANS distributions: one per tensor group, or one per tensor."""
    if "ans" not in SYMBOL_CODERS[params.compressor]:
        return {}
    if params.distribution == "group":
        return {g: fit_codebook(np.concatenate(parts)) for g, parts in by_group.items()}
    return {name: fit_codebook(qt.q.numpy()) for name, qt in qm.quantized.items()}


def symbol_blob(name: str, qt: QuantizedTensor, params: PackParams, codebooks: dict[str, Codebook]) -> tuple[bytes, dict, int | None]:
    """(blob, encoding fields, ANS payload bytes or None) of one integer tensor: the smallest of
    the coders `SYMBOL_CODERS[pack.compressor]` names (the first on ties)."""
    symbols = qt.q.numpy()
    options: list[tuple[bytes, dict]] = []
    ans_bytes = None
    for coder in SYMBOL_CODERS[params.compressor]:
        if coder == "ans":
            book = qt.group if params.distribution == "group" else name
            blob = encode(symbols, codebooks[book])
            ans_bytes = len(blob)
            options.append((blob, {"encoding": "ans", "shuffle": False, "codebook": book}))
        else:
            options.append((compress(symbols.tobytes(), coder, codec_level(coder, params)), {"encoding": coder, "shuffle": False}))
    blob, enc = min(options, key=lambda option: len(option[0]))
    return blob, enc, ans_bytes


def pack_model(qm: QuantizedModel, params: PackParams, meta: dict | None = None) -> PackedModel:
    """Encode every tensor of `qm` into one artifact (bytes)."""
    by_group: dict[str, list[np.ndarray]] = {}
    for qt in qm.quantized.values():
        by_group.setdefault(qt.group, []).append(qt.q.numpy().ravel())
    codebooks = fit_codebooks(qm, by_group, params)
    entries: list[dict] = []
    blobs: list[bytes] = []
    packed: dict[str, int] = {}
    used_books: set[str] = set()

    def add(key: str, amount: int) -> None:
        packed[key] = packed.get(key, 0) + amount

    for name in qm.dtypes:
        out_dtype = qm.dtypes[name] if qm.dtypes[name] in ("float16", "bfloat16", "float32") else "float32"
        if name in qm.quantized:
            qt = qm.quantized[name]
            blob, enc, ans_bytes = symbol_blob(name, qt, params, codebooks)
            entries.append({"name": name, "role": "q", "shape": list(qt.q.shape), "dtype": "int8", "out_dtype": out_dtype, "bits": qt.bits, **enc})
            blobs.append(blob)
            add(qt.group, len(blob))
            add(f"{qt.group}_enc_{enc['encoding']}", 1)
            if ans_bytes is not None:
                add(f"{qt.group}_ans", ans_bytes)
            if "codebook" in enc:
                used_books.add(enc["codebook"])
            scale_blob, scale_enc = side_blob(qt.scale.half(), params)
            entries.append({"name": name, "role": "scale", "shape": [int(qt.scale.numel())], "dtype": "float16", "out_dtype": out_dtype, **scale_enc})
            blobs.append(scale_blob)
            add(f"{qt.group}_scales", len(scale_blob))
            for part, tensor in qt.extras.items():
                extra_blob, extra_enc = side_blob(tensor, params)
                entries.append({"name": name, "role": "extra", "part": part, "shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype), "out_dtype": out_dtype, **extra_enc})
                blobs.append(extra_blob)
                add(f"{qt.group}_extras", len(extra_blob))
        else:
            tensor = qm.passthrough[name]
            blob, enc = side_blob(tensor, params)
            entries.append({"name": name, "role": "plain", "shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype), "out_dtype": out_dtype, **enc})
            blobs.append(blob)
            add("passthrough", len(blob))
    for book_name, book in codebooks.items():
        group = book_name if params.distribution == "group" else qm.quantized[book_name].group
        add(f"{group}_ans", codebook_bytes(book.to_json()))
        if book_name in used_books:
            add(f"{group}_codebook", codebook_bytes(book.to_json()))
    stored_books = {k: v.to_json() for k, v in codebooks.items() if k in used_books}
    data = encode_artifact(qm.model_config, meta or {}, dict(qm.aliases), stored_books, entries, blobs)
    groups = group_accounting(qm, by_group, packed, params.reference_brotli)
    return PackedModel(data, groups, sum(g["packed_bytes"] for g in groups.values()), sum(g["entropy_bytes"] for g in groups.values()))


def codebook_bytes(book: dict) -> int:
    """What a codebook adds to the artifact header (its compact JSON)."""
    return len(json.dumps(book, separators=(",", ":")))


def group_accounting(qm: QuantizedModel, by_group: dict[str, list[np.ndarray]], packed: dict[str, int], reference_brotli: bool) -> dict[str, dict]:
    errors = summarize_report(qm.report)
    groups = {}
    for group, parts in by_group.items():
        symbols = np.concatenate(parts)
        entropy_bits = order0_entropy_bits(symbols)
        bits = sorted({qt.bits for qt in qm.quantized.values() if qt.group == group})
        coded = packed.get(group, 0) + packed.get(f"{group}_codebook", 0)
        groups[group] = {
            "bits": bits[0] if len(bits) == 1 else bits,
            "symbols": int(symbols.size),
            "entropy_bits": entropy_bits,
            "entropy_bytes": entropy_bits / 8,
            "packed_bytes": coded,
            "codebook_bytes": packed.get(f"{group}_codebook", 0),
            "packed_to_entropy": coded / (entropy_bits / 8) if entropy_bits else None,
            "ans_bytes": packed.get(f"{group}_ans"),
            "encodings": {k.rsplit("_enc_", 1)[1]: v for k, v in packed.items() if k.startswith(f"{group}_enc_")},
            "scale_bytes": packed.get(f"{group}_scales", 0),
            "extras_bytes": packed.get(f"{group}_extras", 0),
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


def pack_stage(params: PackParams, quantized_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
               repo_root: str | Path = ".", tokenizer: str | Path | None = None) -> PackReport:
    """The `pack` stage: artifact into `out_dir`, metrics JSON; fails over the byte limit. With
    `tokenizer`, the artifact records its sha256 and evaluation refuses any other tokenizer."""
    qm = load_quantized(quantized_dir)
    meta: dict = {"pack": {"compressor": params.compressor, "distribution": params.distribution, "side_codec": params.side_codec}}
    if tokenizer is not None:
        meta["tokenizer_sha256"] = tokenizer_sha256(tokenizer)
    packed = pack_model(qm, params, meta)
    code = measure_code_bytes(params.code_modules, repo_root)
    total = packed.bytes_model + code.bytes_code
    out_dir = Path(out_dir)
    artifact_path = out_dir / ARTIFACT_NAME
    log.info("bytes_model: %d bytes_code: %d bytes_total: %d limit_bytes: %d", packed.bytes_model, code.bytes_code, total, params.limit_bytes)
    if total > params.limit_bytes:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        raise ArtifactError(f"bytes_total {total} (model {packed.bytes_model} + code {code.bytes_code}) exceeds pack.limit_bytes {params.limit_bytes} by {total - params.limit_bytes} bytes")
    with atomic_dir(out_dir) as tmp:
        (tmp / ARTIFACT_NAME).write_bytes(packed.data)
    report = PackReport(os.path.relpath(artifact_path, repo_root), packed.bytes_model, code.bytes_code, total, params.limit_bytes)
    metrics = {
        **report.__dict__,
        "bytes_symbols": packed.bytes_symbols,
        "entropy_bytes": packed.entropy_bytes,
        "symbols_to_entropy": packed.bytes_symbols / packed.entropy_bytes if packed.entropy_bytes else None,
        "brotli11_symbol_bytes": sum(g["brotli11_bytes"] for g in packed.groups.values()) if params.reference_brotli else None,
        "compressor": params.compressor,
        "groups": packed.groups,
        "code": {"modules": list(params.code_modules), "files": list(code.files), "bytes_raw": code.bytes_raw, "codec": "lzma-9e"},
    }
    write_json_atomic(metrics_path, metrics)
    return report
