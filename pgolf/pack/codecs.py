"""General-purpose codecs for artifact blobs, with bounded decompression, and a byte shuffle.

Every decoder is told the exact decoded length and never produces much more than that, so a
forged blob cannot make the loader allocate without bound (a "decompression bomb"). Any failure
is an ArtifactError. lzma uses a raw LZMA2 stream with a dictionary size fixed here, not in the
file, so a file cannot request a huge decoder dictionary either.
"""

from __future__ import annotations

import io
import lzma
from collections.abc import Callable
from dataclasses import dataclass

import brotli
import numpy as np
import zstandard

from pgolf.errors import ArtifactError

LZMA_DICT_BYTES = 1 << 24
ZSTD_READ_CHUNK = 1 << 20


def _lzma_filters(preset: int | None = None) -> list[dict]:
    spec: dict = {"id": lzma.FILTER_LZMA2, "dict_size": LZMA_DICT_BYTES}
    if preset is not None:
        spec["preset"] = preset | lzma.PRESET_EXTREME
    return [spec]


def _zstd_bounded(data: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_size=ZSTD_READ_CHUNK)
    parts, size = [], 0
    while size <= limit:
        chunk = reader.read(min(ZSTD_READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _brotli_bounded(data: bytes, limit: int) -> bytes:
    decoder = brotli.Decompressor()
    out = decoder.process(data, output_buffer_limit=limit)
    if len(out) == limit - 1 and not decoder.is_finished():
        raise ArtifactError("brotli stream does not end where the table says")
    return out


@dataclass(frozen=True)
class Codec:
    """`compress(data, level)`; `decompress(data, limit)` never returns more than `limit` bytes."""

    compress: Callable[[bytes, int], bytes]
    decompress: Callable[[bytes, int], bytes]


# The one registry of general-purpose codecs: pack.side_codec, pack.compressor and the loader.
CODECS: dict[str, Codec] = {
    "raw": Codec(lambda data, level: bytes(data), lambda data, limit: bytes(data)),
    "zstd": Codec(lambda data, level: zstandard.ZstdCompressor(level=level, write_content_size=False).compress(data), _zstd_bounded),
    "brotli": Codec(lambda data, level: brotli.compress(data, quality=level), _brotli_bounded),
    "lzma": Codec(
        lambda data, level: lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(level)),
        lambda data, limit: lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters()).decompress(data, max_length=limit),
    ),
}
# pack.compressor: name -> the coders tried on each symbol stream (the smallest blob wins);
# "ans" is the entropy coder of pgolf.pack.runs. `best`: LZ coders win on trained embeddings
# with near-duplicate rows, which per-run distributions cannot see.
SYMBOL_CODERS: dict[str, tuple[str, ...]] = {"best": ("ans", "brotli", "lzma"), "ans": ("ans",), **{name: (name,) for name in CODECS}}


def _codec(name: str) -> Codec:
    if name not in CODECS:
        raise ArtifactError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
    return CODECS[name]


def compress(data: bytes, codec: str, level: int) -> bytes:
    """Compress `data` with `codec` at `level` (zstd level, brotli quality, lzma preset)."""
    return _codec(codec).compress(data, level)


def decompress(data: bytes, codec: str, expected_len: int) -> bytes:
    """Decode `data`; ArtifactError unless it decodes to exactly `expected_len` bytes."""
    decoder = _codec(codec).decompress
    try:
        out = decoder(data, expected_len + 1)
    except ArtifactError:
        raise
    except (zstandard.ZstdError, brotli.error, lzma.LZMAError, ValueError, MemoryError, EOFError) as exc:
        raise ArtifactError(f"{codec} blob does not decode ({type(exc).__name__}: {exc})") from None
    if len(out) != expected_len:
        raise ArtifactError(f"{codec} blob decodes to {'more than ' if len(out) > expected_len else ''}{len(out)} bytes, table says {expected_len}")
    return out


def shuffle_bytes(data: bytes, itemsize: int) -> bytes:
    """Byte shuffle: all first bytes of the items, then all second bytes, ... (helps compressors)."""
    if itemsize <= 1:
        return bytes(data)
    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize)
    return arr.T.tobytes()


def unshuffle_bytes(data: bytes, itemsize: int) -> bytes:
    """Inverse of `shuffle_bytes`; len(data) must be a multiple of `itemsize`."""
    if itemsize <= 1:
        return bytes(data)
    if len(data) % itemsize:
        raise ArtifactError(f"shuffled blob of {len(data)} bytes is not a whole number of {itemsize}-byte items")
    arr = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1)
    return arr.T.tobytes()
