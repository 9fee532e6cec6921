"""Token shards in the official binary format.

Layout of one shard (all little-endian): a header of 256 int32, ``[0] = SHARD_MAGIC``,
``[1] = SHARD_VERSION``, ``[2] = number of tokens``, the rest zero; then that many uint16 tokens.
The file size must equal ``SHARD_HEADER_BYTES + 2 * tokens`` exactly. Each document is BOS
followed by its tokens (no EOS); validation shards come first in an export.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pgolf.errors import ShardError
from pgolf.io import write_bytes_atomic

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_SHARD_TOKENS = 2**31 - 1
SPLITS = ("val", "train")
SHARDS_MANIFEST = "manifest.json"  # written by the export stage beside the shards
_SHARD_NAME = re.compile(r"^fineweb_(val|train)_(\d{6})\.bin$")


def shard_name(split: str, index: int) -> str:
    """Official file name: ``fineweb_{split}_{index:06d}.bin``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"fineweb_{split}_{index:06d}.bin"


def encode_shard(tokens: np.ndarray) -> bytes:
    """The bytes of a shard holding `tokens` (any integer array with values in [0, 65535])."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ShardError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size > MAX_SHARD_TOKENS:
        raise ShardError(f"too many tokens for one shard: {tokens.size} > {MAX_SHARD_TOKENS}")
    if tokens.dtype != TOKEN_DTYPE:
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ShardError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > 0xFFFF):
            raise ShardError("token ids must lie in [0, 65535] to be stored as uint16")
        tokens = tokens.astype(TOKEN_DTYPE)
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    return header.tobytes() + tokens.tobytes()


def write_shard(path: str | Path, tokens: np.ndarray) -> Path:
    """Write one shard atomically (temporary file, then rename). Returns the path."""
    path = Path(path)
    write_bytes_atomic(path, encode_shard(tokens))
    return path


def read_header(path: str | Path) -> int:
    """Validate a shard's header and size; return its token count. ShardError names the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            raw = handle.read(SHARD_HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard not found") from None
    except IsADirectoryError:
        raise ShardError(f"{path}: is a directory, not a shard") from None
    if size == 0:
        raise ShardError(f"{path}: empty file (0 bytes): a failed or interrupted download?")
    if len(raw) < SHARD_HEADER_BYTES:
        raise ShardError(f"{path}: truncated header ({len(raw)} of {SHARD_HEADER_BYTES} bytes)")
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != SHARD_MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {SHARD_MAGIC}): not a token shard")
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION})")
    count = int(header[2])
    if count < 0:
        raise ShardError(f"{path}: negative token count {count} in header")
    expected = SHARD_HEADER_BYTES + 2 * count
    if size != expected:
        kind = "truncated" if size < expected else "has trailing bytes"
        raise ShardError(f"{path}: {kind}: {size} bytes on disk, header says {count} tokens = {expected} bytes")
    return count


def read_shard(path: str | Path) -> np.ndarray:
    """Memory-map a validated shard's tokens as a read-only uint16 array."""
    count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=SHARD_HEADER_BYTES, shape=(count,))


def list_shards(directory: str | Path, split: str) -> list[Path]:
    """The shards of one split in `directory`, in index order; the indices must be 0..n-1."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise ShardError(f"{directory}: shard directory not found")
    found = sorted(
        (int(m.group(2)), p) for p in directory.iterdir() if (m := _SHARD_NAME.match(p.name)) and m.group(1) == split
    )
    for position, (index, path) in enumerate(found):
        if index != position:
            raise ShardError(f"{directory}: {split} shards are not contiguous: expected index {position}, found {path.name}")
    return [path for _, path in found]


def load_tokens(paths: list[Path]) -> np.ndarray:
    """Concatenate validated shards into one in-memory uint16 array."""
    if not paths:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.concatenate([np.asarray(read_shard(p)) for p in paths])


def split_documents(tokens: np.ndarray, bos_id: int) -> list[np.ndarray]:
    """Cut a token stream at every BOS; each piece starts with BOS. The stream must start with BOS."""
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        return []
    if int(tokens[0]) != bos_id:
        raise ShardError(f"token stream does not start with BOS ({bos_id}); first token is {int(tokens[0])}")
    starts = np.flatnonzero(tokens == bos_id)
    ends = np.append(starts[1:], tokens.size)
    return [tokens[s:e] for s, e in zip(starts, ends)]
