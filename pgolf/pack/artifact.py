"""The pgolf artifact: a small, documented binary container for a quantized model. No pickle.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"PGOLFART"
    8       2     format version (u16) = 3
    10      2     flags (u16) = 0
    12      4     stored header length H in bytes (u32)
    16      4     header length U once decompressed (u32), 2 <= U <= MAX_HEADER_BYTES
    20      4     CRC-32 of the stored header bytes (u32)
    24      8     payload length P in bytes (u64)
    32      4     CRC-32 of bytes 0..31 (u32): the prefix itself
    36      H     header: brotli-compressed UTF-8 JSON object (below)
    36+H    P     payload: the streams, back to back in stream-table order; file size = 36 + H + P

Header JSON: ``format`` ("pgolf-artifact"), ``model_config`` (object: rebuilds the model with
``pgolf.model.build_model``; with ``model_config_crc32`` set it lists only the fields that differ
from `ModelParams`' defaults, and the loader fills those in and checks the CRC-32 of the whole
config, see `pgolf.pack.modelconfig`; the pack stage always writes it so), ``meta`` (free-form provenance), ``aliases`` (tied weight
name -> stored tensor name), ``streams`` and ``tensors``.

``streams``: one entry per blob: ``coder`` (symbol streams: ans | a codec of
`pgolf.pack.codecs.CODECS`; byte streams: a codec), ``shuffle`` (byte-shuffle item size, 1 =
none), ``column`` (symbol streams: each tensor stored transposed, column-major), ``transform``
(symbol streams, optional: a name of `pgolf.pack.transforms.SYMBOL_TRANSFORMS`; the coder then
codes the transformed bytes, one run), ``length`` and ``crc32`` of the blob. ``tensors``: one entry per stored part with ``name``, ``role`` ("q": int8
symbols, "scale": float16 per-row scales of the q tensor of the same name ([rows, ceil(cols /
scale_group)] when that q tensor has a ``scale_group``), "extra": a float part
``"<term>.<part>"`` of that quantized tensor, "refs": int32 [2, n] row references of that q
tensor, `pgolf.pack.rowrefs`, whose symbols are then stored as root rows and child-row differences,
two matrices in its stream, "plain": a tensor stored as is), ``part`` (extras),
``shape``, ``dtype``, ``out_dtype`` (dtype of the rebuilt weight), ``bits``, ``scale_group`` and
``grid`` (q only; the last two optional: one scale per row, the symmetric grid, `pgolf.quant.grids`)
and ``stream``. A stream holds its tensors in table order: a symbol stream holds only q tensors (its
coder decodes them all at once), a byte stream the concatenated little-endian bytes of the others.

`parse_artifact` checks all of it (magic, version, flags, lengths, CRCs, schema, shapes and size
bounds, stream references, streams tiling the payload) before any stream is decoded, and raises
ArtifactError, and nothing else, on any malformed input. Nothing in a file is ever executed.
Format 2 (uncompressed header, one blob per tensor) is not read: repack its quantized model.
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
from pgolf.pack.codecs import CODECS, compress, decompress
from pgolf.pack.transforms import SYMBOL_TRANSFORMS
from pgolf.quant.grids import GRIDS

MAGIC = b"PGOLFART"
FORMAT_VERSION = 3  # 3: compressed header, tensors packed into streams; 2: one blob per tensor
FORMAT_NAME = "pgolf-artifact"
PREFIX = struct.Struct("<8sHHIIIQ")
PREFIX_BYTES = PREFIX.size + 4  # + CRC-32 of the prefix
HEADER_CODEC = "brotli"
HEADER_QUALITY = 11
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
SYMBOL_CODER_NAMES = ("ans", *CODECS)  # what may code a stream of q tensors
MAX_REF_BITS = 7  # row references store differences of symbols in int8 (pgolf.pack.rowrefs)

Dtype = Literal["int8", "uint8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "bool"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, protected_namespaces=())


class StreamEntry(_Strict):
    """One blob of the payload and how to decode it."""

    coder: StrictStr = Field(min_length=1, max_length=32)
    shuffle: StrictInt = Field(1, ge=1, le=8)
    column: StrictBool = False
    transform: StrictStr | None = Field(None, min_length=1, max_length=32)
    length: StrictInt = Field(ge=0)
    crc32: StrictInt = Field(ge=0, le=0xFFFFFFFF)


class TensorEntry(_Strict):
    """One row of the tensor table: one stored part and the stream that holds it."""

    name: StrictStr = Field(min_length=1, max_length=512)
    role: Literal["q", "scale", "extra", "refs", "plain"]
    part: StrictStr | None = Field(None, min_length=1, max_length=64)
    shape: list[StrictInt] = Field(max_length=MAX_NDIM)
    dtype: Dtype
    out_dtype: Literal["float16", "bfloat16", "float32"]
    bits: StrictInt | None = Field(None, ge=2, le=8)
    scale_group: StrictInt | None = Field(None, ge=1, le=MAX_DIM)
    grid: StrictStr | None = Field(None, min_length=1, max_length=32)
    stream: StrictInt = Field(ge=0)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def raw_bytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


class Header(_Strict):
    format: Literal["pgolf-artifact"]
    model_config_: dict = Field(alias="model_config")
    model_config_crc32: StrictInt | None = Field(None, ge=0, le=0xFFFFFFFF)
    meta: dict
    aliases: dict[StrictStr, StrictStr]
    streams: list[StreamEntry]
    tensors: list[TensorEntry]

    def stream_tensors(self, index: int) -> list[TensorEntry]:
        return [e for e in self.tensors if e.stream == index]


@dataclass(frozen=True)
class ParsedArtifact:
    """A structurally valid artifact: its header and each stream's stored bytes, in stream order."""

    header: Header
    blobs: tuple[bytes, ...]
    header_bytes: int
    file_bytes: int


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_artifact(model_config: dict, meta: dict, aliases: dict[str, str], streams: list[dict], entries: list[dict],
                    blobs: list[bytes], model_config_crc32: int | None = None) -> bytes:
    """Assemble the container. `streams` are stream rows without length/crc32 (filled here from `blobs`)."""
    table = [{**stream, "length": len(blob), "crc32": crc32(blob)} for stream, blob in zip(streams, blobs, strict=True)]
    header = {"format": FORMAT_NAME, "model_config": model_config, "meta": meta, "aliases": aliases, "streams": table, "tensors": entries}
    if model_config_crc32 is not None:
        header["model_config_crc32"] = model_config_crc32
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
    parse_header(raw)  # the writer never emits what the reader would reject
    stored = compress(raw, HEADER_CODEC, HEADER_QUALITY)
    payload = b"".join(blobs)
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(stored), len(raw), crc32(stored), len(payload))
    return prefix + struct.pack("<I", crc32(prefix)) + stored + payload


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
    _check_streams(header)
    return header


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in an artifact header")


def _check_table(header: Header, file_bytes: int | None) -> None:
    seen: set[tuple[str, str, str | None]] = set()
    total = 0
    cap = MAX_TOTAL_ELEMENTS if file_bytes is None else min(MAX_TOTAL_ELEMENTS, ELEMENT_ALLOWANCE + MAX_ELEMENTS_PER_FILE_BYTE * file_bytes)
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
        _check_entry(entry)
    names_q = {e.name: e for e in header.tensors if e.role == "q"}
    for entry in header.tensors:
        if entry.role == "scale":
            owner = names_q.get(entry.name)
            if owner is None or len(owner.shape) != 2 or entry.shape != scale_shape(owner):
                raise ArtifactError(f"tensor {entry.name}: scale shape {entry.shape} does not match a q tensor's rows (and scale groups)")
        if entry.role == "extra" and entry.name not in names_q:
            raise ArtifactError(f"tensor {entry.name}: extra {entry.part} without a q tensor")
        if entry.role == "refs":
            owner = names_q.get(entry.name)
            if owner is None or owner.bits > MAX_REF_BITS or entry.shape[1] > owner.shape[0]:
                raise ArtifactError(f"tensor {entry.name}: row references {entry.shape} need a q tensor of at most {MAX_REF_BITS} bits with that many rows")
    for name in names_q:
        if (name, "scale", None) not in seen:
            raise ArtifactError(f"tensor {name}: q tensor without a scale")
        if (name, "plain", None) in seen:
            raise ArtifactError(f"tensor {name}: stored both quantized and as float")
    stored = {e.name for e in header.tensors}
    for alias, target in header.aliases.items():
        if target not in stored or alias in stored:
            raise ArtifactError(f"alias {alias} -> {target}: target missing or alias shadows a stored tensor")


def scale_shape(q: TensorEntry) -> list[int]:
    """The scale part's shape of a 2-D q tensor: [rows], or [rows, groups] with a scale_group."""
    return q.shape[:1] if q.scale_group is None else [q.shape[0], -(-q.shape[1] // q.scale_group)]


def _check_entry(entry: TensorEntry) -> None:
    where = f"tensor {entry.name} ({entry.role})"
    if entry.role == "q":
        if entry.dtype != "int8" or entry.bits is None or len(entry.shape) != 2:
            raise ArtifactError(f"{where}: q tensors are 2-D int8 with bits")
        if entry.grid is not None and entry.grid not in GRIDS:
            raise ArtifactError(f"{where}: unknown grid {entry.grid!r} (known: {', '.join(GRIDS)})")
    elif entry.bits is not None or entry.scale_group is not None or entry.grid is not None:
        raise ArtifactError(f"{where}: only q tensors carry bits, scale_group and grid")
    if entry.role == "scale" and entry.dtype != "float16":
        raise ArtifactError(f"{where}: scales are float16")
    if (entry.role == "extra") != (entry.part is not None):
        raise ArtifactError(f"{where}: extras, and only extras, name a part")
    if entry.role == "extra" and entry.dtype not in FLOAT_DTYPES:
        raise ArtifactError(f"{where}: extras are float tensors, got {entry.dtype}")
    if entry.role == "refs" and (entry.dtype != "int32" or len(entry.shape) != 2 or entry.shape[0] != 2):
        raise ArtifactError(f"{where}: row references are int32 [2, n]")


def _check_streams(header: Header) -> None:
    members: dict[int, list[TensorEntry]] = {}
    for entry in header.tensors:
        if entry.stream >= len(header.streams):
            raise ArtifactError(f"tensor {entry.name} ({entry.role}): stream {entry.stream}, but the table has {len(header.streams)}")
        members.setdefault(entry.stream, []).append(entry)
    for index, stream in enumerate(header.streams):
        where = f"stream {index} ({stream.coder})"
        entries = members.get(index)
        if not entries:
            raise ArtifactError(f"{where}: holds no tensor")
        symbols = entries[0].role == "q"
        if any((e.role == "q") != symbols for e in entries):
            raise ArtifactError(f"{where}: mixes q tensors with other parts")
        if stream.coder not in (SYMBOL_CODER_NAMES if symbols else CODECS):
            raise ArtifactError(f"{where}: unknown coder for {'symbols' if symbols else 'bytes'} (known: {', '.join(SYMBOL_CODER_NAMES if symbols else CODECS)})")
        if symbols and stream.shuffle != 1:
            raise ArtifactError(f"{where}: symbol streams are not shuffled")
        if not symbols and (stream.column or stream.transform is not None):
            raise ArtifactError(f"{where}: only symbol streams are column-major or transformed")
        if stream.transform is not None:
            _check_transform(header, where, stream, entries)
        if stream.shuffle > 1 and any(ITEMSIZE[e.dtype] != stream.shuffle for e in entries):
            raise ArtifactError(f"{where}: shuffled by {stream.shuffle}-byte items, but holds other item sizes")
        raw = sum(e.raw_bytes for e in entries)
        if stream.transform is not None:
            raw = SYMBOL_TRANSFORMS[stream.transform].length(raw, entries[0].bits)
        if stream.coder == "raw" and stream.length != raw:
            raise ArtifactError(f"{where}: raw length {stream.length} != {raw} bytes of its tensors")


def _check_transform(header: Header, where: str, stream: StreamEntry, entries: list[TensorEntry]) -> None:
    if stream.transform not in SYMBOL_TRANSFORMS:
        raise ArtifactError(f"{where}: unknown transform {stream.transform!r} (known: {', '.join(SYMBOL_TRANSFORMS)})")
    if len({(e.bits, e.grid) for e in entries}) != 1:
        raise ArtifactError(f"{where}: a transformed stream's tensors must share bits and grid")
    if any(e.role == "refs" and e.name in {m.name for m in entries} for e in header.tensors):
        raise ArtifactError(f"{where}: a transformed stream holds no tensor with row references")


def parse_artifact(data: bytes) -> ParsedArtifact:
    """Validate a whole artifact held in memory; return its header and stream blobs."""
    if len(data) < PREFIX_BYTES:
        raise ArtifactError(f"truncated: {len(data)} bytes, the fixed prefix alone is {PREFIX_BYTES}")
    magic, version, flags, stored_len, header_len, header_crc, payload_len = PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise ArtifactError(f"bad magic {magic!r} (expected {MAGIC!r}): not a pgolf artifact")
    (prefix_crc,) = struct.unpack_from("<I", data, PREFIX.size)
    if prefix_crc != crc32(data[: PREFIX.size]):
        raise ArtifactError("prefix checksum mismatch: the fixed header fields are corrupt")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"unsupported format version {version} (this loader reads {FORMAT_VERSION}; repack older artifacts)")
    if flags != 0:
        raise ArtifactError(f"unknown flags {flags:#06x}")
    if not 2 <= header_len <= MAX_HEADER_BYTES:
        raise ArtifactError(f"header length {header_len} outside [2, {MAX_HEADER_BYTES}]")
    expected = PREFIX_BYTES + stored_len + payload_len
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise ArtifactError(f"{kind}: {len(data)} bytes, prefix says {expected}")
    stored = data[PREFIX_BYTES : PREFIX_BYTES + stored_len]
    if crc32(stored) != header_crc:
        raise ArtifactError("header checksum mismatch")
    try:
        raw_header = decompress(stored, HEADER_CODEC, header_len)
    except ArtifactError as exc:
        raise ArtifactError(f"header does not decompress ({exc})") from None
    header = parse_header(raw_header, len(data))
    used = sum(s.length for s in header.streams)
    if used != payload_len:
        raise ArtifactError(f"stream table covers {used} payload bytes, prefix says {payload_len}")
    offset = PREFIX_BYTES + stored_len
    blobs = []
    for index, stream in enumerate(header.streams):
        blob = data[offset : offset + stream.length]
        offset += stream.length
        if crc32(blob) != stream.crc32:
            raise ArtifactError(f"stream {index} ({stream.coder}): checksum mismatch")
        blobs.append(blob)
    return ParsedArtifact(header=header, blobs=tuple(blobs), header_bytes=stored_len, file_bytes=len(data))


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
