"""The pgolf artifact: a small, documented binary container for a quantized model. No pickle.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"PGOLFART"
    8       2     format version (u16) = 2
    10      2     flags (u16) = 0
    12      4     header length H in bytes (u32), 2 <= H <= MAX_HEADER_BYTES
    16      4     CRC-32 of the header bytes (u32)
    20      8     payload length P in bytes (u64)
    28      4     CRC-32 of bytes 0..27 (u32): the prefix itself
    32      H     header: UTF-8 JSON object (below)
    32+H    P     payload: the blobs, back to back in table order, no gaps; file size = 32 + H + P

Header JSON: ``format`` ("pgolf-artifact"), ``model_config`` (object: rebuilds the model with
``pgolf.model.build_model``), ``meta`` (object: free-form provenance), ``aliases`` (tied weight
name -> stored tensor name), ``codebooks`` (name -> {min_symbol, counts}: the ANS symbol
distributions) and ``tensors``, the table: one entry per blob with ``name``, ``role`` ("q": int8
symbols, "scale": float16 per-row scales of the q tensor of the same name, "plain": a passthrough
tensor stored as is, "extra": a float part of the quantized tensor of the same name, named by
``part`` as ``"<term>.<part>"``, e.g. a low-rank correction's ``"lowrank.u"``), ``shape``, ``dtype`` (stored element type), ``out_dtype`` (dtype of the rebuilt weight),
``bits`` (q only), ``encoding`` (raw | zstd | brotli | lzma | ans), ``shuffle`` (byte shuffle
before the codec), ``codebook`` (ans only), ``offset`` and ``length`` (in the payload) and
``crc32`` (of the blob as stored).

`parse_artifact` checks all of it (magic, version, flags, lengths, CRCs, schema, shapes and
size bounds, offsets tiling the payload) before any blob is decoded, and raises ArtifactError,
and nothing else, on any malformed input. Nothing in a file is ever executed.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from pgolf.errors import ArtifactError

MAGIC = b"PGOLFART"
FORMAT_VERSION = 2  # 2: role "extra" (parts of a quantized tensor besides symbols and scales)
FORMAT_NAME = "pgolf-artifact"
PREFIX = struct.Struct("<8sHHIIQ")
PREFIX_BYTES = PREFIX.size + 4  # + CRC-32 of the prefix
MAX_HEADER_BYTES = 1 << 24
MAX_ARTIFACT_BYTES = 1 << 30
MAX_TENSOR_ELEMENTS = 1 << 28
MAX_TOTAL_ELEMENTS = 1 << 28
# A file may claim at most this many elements per byte of its size (plus a small allowance):
# far above any real compression ratio, it stops a few-KB file from demanding gigabytes.
MAX_ELEMENTS_PER_FILE_BYTE = 1024
ELEMENT_ALLOWANCE = 1 << 16
MAX_DIM = 1 << 28
MAX_NDIM = 8
ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "float16": 2, "bfloat16": 2, "float32": 4, "bool": 1}
FLOAT_DTYPES = ("float16", "bfloat16", "float32")
ENCODINGS = ("raw", "zstd", "brotli", "lzma", "ans")

Dtype = Literal["int8", "uint8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "bool"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, protected_namespaces=())


class TensorEntry(_Strict):
    """One row of the tensor table: where one blob lives and how to decode it."""

    name: StrictStr = Field(min_length=1, max_length=512)
    role: Literal["q", "scale", "extra", "plain"]
    part: StrictStr | None = Field(None, min_length=1, max_length=64)
    shape: list[StrictInt] = Field(max_length=MAX_NDIM)
    dtype: Dtype
    out_dtype: Literal["float16", "bfloat16", "float32"]
    bits: StrictInt | None = Field(None, ge=2, le=8)
    encoding: Literal["raw", "zstd", "brotli", "lzma", "ans"]
    shuffle: StrictBool = False
    codebook: StrictStr | None = None
    offset: StrictInt = Field(ge=0)
    length: StrictInt = Field(ge=0)
    crc32: StrictInt = Field(ge=0, le=0xFFFFFFFF)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def raw_bytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


class CodebookEntry(_Strict):
    min_symbol: StrictInt = Field(ge=-128, le=127)
    counts: list[StrictInt] = Field(min_length=1, max_length=256)


class Header(_Strict):
    format: Literal["pgolf-artifact"]
    model_config_: dict = Field(alias="model_config")
    meta: dict
    aliases: dict[StrictStr, StrictStr]
    codebooks: dict[StrictStr, CodebookEntry]
    tensors: list[TensorEntry]


@dataclass(frozen=True)
class ParsedArtifact:
    """A structurally valid artifact: its header and each blob's stored bytes, in table order."""

    header: Header
    blobs: tuple[bytes, ...]
    header_bytes: int
    file_bytes: int


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_artifact(model_config: dict, meta: dict, aliases: dict[str, str], codebooks: dict[str, dict], entries: list[dict], blobs: list[bytes]) -> bytes:
    """Assemble the container. `entries` are table rows without offset/length/crc32 (filled here)."""
    table, offset = [], 0
    for entry, blob in zip(entries, blobs, strict=True):
        table.append({**entry, "offset": offset, "length": len(blob), "crc32": crc32(blob)})
        offset += len(blob)
    header = {"format": FORMAT_NAME, "model_config": model_config, "meta": meta, "aliases": aliases, "codebooks": codebooks, "tensors": table}
    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
    parse_header(header_bytes)  # the writer never emits what the reader would reject
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes), crc32(header_bytes), offset)
    return prefix + struct.pack("<I", crc32(prefix)) + header_bytes + b"".join(blobs)


def parse_header(raw: bytes, file_bytes: int | None = None) -> Header:
    """Decode and validate the JSON header (schema and cross-references); with `file_bytes`,
    also bound the total element count by the file's size."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ArtifactError(f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ArtifactError("header is not a JSON object")
    try:
        header = Header.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        raise ArtifactError(f"header field {where}: {err.get('msg', 'invalid')} ({exc.error_count()} problem(s))") from None
    except RecursionError:
        raise ArtifactError("header is nested too deeply") from None
    _check_table(header, file_bytes)
    return header


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in an artifact header")


def _check_table(header: Header, file_bytes: int | None) -> None:
    seen: set[tuple[str, str, str | None]] = set()
    total = 0
    cap = MAX_TOTAL_ELEMENTS if file_bytes is None else min(MAX_TOTAL_ELEMENTS, ELEMENT_ALLOWANCE + MAX_ELEMENTS_PER_FILE_BYTE * file_bytes)
    expected_offset = 0
    for entry in header.tensors:
        key = (entry.name, entry.role, entry.part)
        if key in seen:
            raise ArtifactError(f"tensor {entry.name} ({entry.role}{' ' + entry.part if entry.part else ''}) appears twice in the table")
        seen.add(key)
        if any(d < 0 or d > MAX_DIM for d in entry.shape):
            raise ArtifactError(f"tensor {entry.name}: shape {entry.shape} has a dimension outside [0, {MAX_DIM}]")
        if entry.numel > MAX_TENSOR_ELEMENTS:
            raise ArtifactError(f"tensor {entry.name}: {entry.numel} elements exceeds {MAX_TENSOR_ELEMENTS}")
        total += entry.numel
        if total > cap:
            raise ArtifactError(f"table claims more than {cap} elements: implausible for a file of {file_bytes} bytes (cap {MAX_TOTAL_ELEMENTS})")
        if entry.offset != expected_offset:
            raise ArtifactError(f"tensor {entry.name}: offset {entry.offset}, expected {expected_offset} (blobs must be contiguous)")
        expected_offset += entry.length
        _check_entry(entry, header)
    names_q = {e.name: e for e in header.tensors if e.role == "q"}
    for entry in header.tensors:
        if entry.role == "scale":
            owner = names_q.get(entry.name)
            if owner is None or len(owner.shape) != 2 or entry.shape != owner.shape[:1]:
                raise ArtifactError(f"tensor {entry.name}: scale shape {entry.shape} does not match a q tensor's rows")
        if entry.role == "extra" and entry.name not in names_q:
            raise ArtifactError(f"tensor {entry.name}: extra {entry.part} without a q tensor")
    for name in names_q:
        if (name, "scale", None) not in seen:
            raise ArtifactError(f"tensor {name}: q tensor without a scale")
        if (name, "plain", None) in seen:
            raise ArtifactError(f"tensor {name}: stored both quantized and as float")
    stored = {e.name for e in header.tensors}
    for alias, target in header.aliases.items():
        if target not in stored or alias in stored:
            raise ArtifactError(f"alias {alias} -> {target}: target missing or alias shadows a stored tensor")


def _check_entry(entry: TensorEntry, header: Header) -> None:
    where = f"tensor {entry.name} ({entry.role})"
    if entry.role == "q":
        if entry.dtype != "int8" or entry.bits is None or len(entry.shape) != 2:
            raise ArtifactError(f"{where}: q tensors are 2-D int8 with bits")
    elif entry.bits is not None:
        raise ArtifactError(f"{where}: only q tensors carry bits")
    if entry.role == "scale" and entry.dtype != "float16":
        raise ArtifactError(f"{where}: scales are float16")
    if (entry.role == "extra") != (entry.part is not None):
        raise ArtifactError(f"{where}: extras, and only extras, name a part")
    if entry.role == "extra" and entry.dtype not in FLOAT_DTYPES:
        raise ArtifactError(f"{where}: extras are float tensors, got {entry.dtype}")
    if entry.encoding == "ans":
        if entry.role != "q" or entry.codebook not in header.codebooks:
            raise ArtifactError(f"{where}: ans needs a q tensor and a known codebook, got {entry.codebook!r}")
        if entry.shuffle:
            raise ArtifactError(f"{where}: ans blobs are not shuffled")
    elif entry.codebook is not None:
        raise ArtifactError(f"{where}: codebook given for encoding {entry.encoding}")
    if entry.encoding == "raw" and entry.length != entry.raw_bytes:
        raise ArtifactError(f"{where}: raw length {entry.length} != {entry.raw_bytes} bytes for shape {entry.shape}")


def parse_artifact(data: bytes) -> ParsedArtifact:
    """Validate a whole artifact held in memory; return its header and blobs."""
    if len(data) < PREFIX_BYTES:
        raise ArtifactError(f"truncated: {len(data)} bytes, the fixed prefix alone is {PREFIX_BYTES}")
    magic, version, flags, header_len, header_crc, payload_len = PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise ArtifactError(f"bad magic {magic!r} (expected {MAGIC!r}): not a pgolf artifact")
    (prefix_crc,) = struct.unpack_from("<I", data, PREFIX.size)
    if prefix_crc != crc32(data[: PREFIX.size]):
        raise ArtifactError("prefix checksum mismatch: the fixed header fields are corrupt")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"unsupported format version {version} (this loader reads {FORMAT_VERSION})")
    if flags != 0:
        raise ArtifactError(f"unknown flags {flags:#06x}")
    if not 2 <= header_len <= MAX_HEADER_BYTES:
        raise ArtifactError(f"header length {header_len} outside [2, {MAX_HEADER_BYTES}]")
    expected = PREFIX_BYTES + header_len + payload_len
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise ArtifactError(f"{kind}: {len(data)} bytes, prefix says {expected}")
    raw_header = data[PREFIX_BYTES : PREFIX_BYTES + header_len]
    if crc32(raw_header) != header_crc:
        raise ArtifactError("header checksum mismatch")
    header = parse_header(raw_header, len(data))
    used = sum(e.length for e in header.tensors)
    if used != payload_len:
        raise ArtifactError(f"table covers {used} payload bytes, prefix says {payload_len}")
    base = PREFIX_BYTES + header_len
    blobs = []
    for entry in header.tensors:
        blob = data[base + entry.offset : base + entry.offset + entry.length]
        if crc32(blob) != entry.crc32:
            raise ArtifactError(f"tensor {entry.name} ({entry.role}): checksum mismatch")
        blobs.append(blob)
    return ParsedArtifact(header=header, blobs=tuple(blobs), header_bytes=header_len, file_bytes=len(data))


def read_artifact_bytes(path: str | Path) -> bytes:
    """Read a file after checking its size against MAX_ARTIFACT_BYTES; ArtifactError if unreadable."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_ARTIFACT_BYTES:
            raise ArtifactError(f"{path}: {size} bytes exceeds the loader's cap of {MAX_ARTIFACT_BYTES}")
        return path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: artifact not found") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a directory, not an artifact") from None
    except PermissionError:
        raise ArtifactError(f"{path}: permission denied") from None
