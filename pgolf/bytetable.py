"""The challenge's byte accounting of a SentencePiece vocabulary: bytes per target token.

Apart from tokenizer training (`pgolf.tokenizer`) so that the artifact runtime, which scores
validation tokens, carries only this. Rules: boundary tokens (control / unknown / unused) count 0
bytes, byte-fallback pieces 1 byte, other pieces their UTF-8 length without a leading ``▁``, plus
1 for the ``▁`` unless the previous token is a boundary.

Case-transformed tokens (`pgolf.casetransform`) take their bytes from the validation byte sidecar
instead (PR #1729's format): ``fineweb_val_bytes_NNNNNN.bin`` beside each validation shard, in the
shard format, one count of original UTF-8 bytes per token (BOS 0).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from pgolf.data.shards import read_header, read_shard
from pgolf.errors import DataError

SPACE_PIECE = "\u2581"
SIDECAR_PREFIX = "fineweb_val_bytes_"


def tokenizer_sha256(model_path: str | Path) -> str:
    """sha256 of a tokenizer model file: the identity an artifact records and evaluation checks."""
    path = Path(model_path)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise DataError(f"{path}: tokenizer model not found") from None


def load_processor(model_path: str | Path) -> spm.SentencePieceProcessor:
    """A SentencePieceProcessor for a model file; DataError if it is missing or unreadable."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"{model_path}: tokenizer model not found")
    try:
        return spm.SentencePieceProcessor(model_file=str(model_path))
    except (RuntimeError, OSError) as exc:
        raise DataError(f"{model_path}: not a SentencePiece model ({exc})") from None



@dataclass(frozen=True, eq=False)
class ByteTable:
    """Per-id byte accounting of a vocabulary (read-only arrays of length V)."""

    base_bytes: np.ndarray  # int16: UTF-8 bytes of the piece without a leading ▁
    has_leading_space: np.ndarray  # bool: the piece starts with ▁ (one more byte after a non-boundary)
    is_boundary: np.ndarray  # bool: control / unknown / unused ids (0 bytes)

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.shape[0])


def byte_table(sp: spm.SentencePieceProcessor) -> ByteTable:
    """The challenge's byte table of a SentencePiece model."""
    size = sp.vocab_size()
    base = np.zeros(size, dtype=np.int16)
    space = np.zeros(size, dtype=bool)
    boundary = np.zeros(size, dtype=bool)
    for i in range(size):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            boundary[i] = True
        elif sp.is_byte(i):
            base[i] = 1
        else:
            piece = sp.id_to_piece(i)
            if piece.startswith(SPACE_PIECE):
                space[i] = True
                piece = piece[len(SPACE_PIECE) :]
            base[i] = len(piece.encode("utf-8"))
    for array in (base, space, boundary):
        array.flags.writeable = False
    return ByteTable(base_bytes=base, has_leading_space=space, is_boundary=boundary)


def token_bytes(table: ByteTable, prev_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """Bytes of each target token given the token before it (same shapes; int64 result)."""
    prev_ids = np.asarray(prev_ids)
    target_ids = np.asarray(target_ids)
    if prev_ids.shape != target_ids.shape:
        raise ValueError(f"prev_ids {prev_ids.shape} and target_ids {target_ids.shape} differ in shape")
    if target_ids.size and max(int(prev_ids.max()), int(target_ids.max())) >= table.vocab_size:
        raise DataError(f"token id {max(int(prev_ids.max()), int(target_ids.max()))} >= vocab size {table.vocab_size}")
    space = table.has_leading_space[target_ids] & ~table.is_boundary[prev_ids]
    return table.base_bytes[target_ids].astype(np.int64) + space


def stream_bytes(table: ByteTable, tokens: np.ndarray) -> np.ndarray:
    """Bytes of every token of a stream; the first token is taken to follow a boundary."""
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        return np.zeros(0, dtype=np.int64)
    first = table.base_bytes[tokens[:1]].astype(np.int64)
    return np.concatenate([first, token_bytes(table, tokens[:-1], tokens[1:])])


def sidecar_name(index: int) -> str:
    """The byte sidecar of validation shard `index`: ``fineweb_val_bytes_{index:06d}.bin``."""
    return f"{SIDECAR_PREFIX}{index:06d}.bin"


def load_sidecar(val_paths: list[Path]) -> np.ndarray:
    """The sidecar's counts for every validation token (int64); each file is checked like a shard and
    must hold one count per token of its shard (DataError naming the file)."""
    parts = []
    for index, path in enumerate(val_paths):
        side = Path(path).with_name(sidecar_name(index))
        if not side.is_file():
            raise DataError(f"{side}: validation byte sidecar not found beside {Path(path).name}")
        counts = read_shard(side)
        tokens = read_header(path)
        if counts.size != tokens:
            raise DataError(f"{side}: {counts.size} byte counts for the {tokens} tokens of {Path(path).name}")
        parts.append(np.asarray(counts, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
