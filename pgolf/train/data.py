"""Token batches from shards: one stream read in order, wrapping around, split across ranks.

Every accumulation round takes one contiguous chunk of `world_size * (micro_tokens + 1)` tokens
from the shared stream and gives rank r the r-th span (as the official loader does), so the
tokens of a step depend only on `batch_tokens` and `grad_accum_steps`, never on the world size.

Given the vocabulary size, every shard is checked as it is loaded (one vectorized max/min over its
tokens) so an out-of-vocabulary id is a DataError naming the file, not an embedding crash (a
device-side assert on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pgolf.data.shards import read_header, read_shard
from pgolf.dist import DistInfo
from pgolf.errors import DataError


def check_token_ids(tokens: np.ndarray, vocab_size: int | None, where: Path | str) -> None:
    """DataError naming `where`, the first id outside [0, vocab_size) and its position; no-op without a vocab."""
    if vocab_size is None or tokens.size == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low >= 0 and high < vocab_size:
        return
    bad = (tokens >= vocab_size) | (tokens < 0) if low < 0 else tokens >= vocab_size
    position = int(np.argmax(bad))
    raise DataError(
        f"{where}: token id {int(tokens[position])} at position {position} is outside the vocabulary of {vocab_size} "
        f"(ids {low}..{high}; {int(np.count_nonzero(bad))} bad tokens): shards and tokenizer/vocab_size do not match"
    )


@dataclass(frozen=True)
class StreamPosition:
    """Where the training stream resumes: shard index and token offset inside it."""

    shard: int = 0
    offset: int = 0


class TokenStream:
    """Reads shards in order and wraps around forever; `position` is saved in checkpoints.

    With `vocab_size`, each shard's ids are checked when it is loaded (see check_token_ids).
    """

    def __init__(self, paths: list[Path], position: StreamPosition = StreamPosition(), vocab_size: int | None = None) -> None:
        if not paths:
            raise DataError("no training shards found")
        if not all(read_header(p) > 0 for p in paths):
            raise DataError(f"{paths[0].parent}: a training shard holds no tokens")
        if not (0 <= position.shard < len(paths)):
            raise DataError(f"resume position shard {position.shard} out of range (have {len(paths)} shards)")
        self.paths, self.vocab_size = paths, vocab_size
        self.shard = position.shard
        self.tokens = self._load(self.shard)
        if not (0 <= position.offset <= len(self.tokens)):
            raise DataError(f"resume position offset {position.offset} out of range for {paths[self.shard].name}")
        self.offset = position.offset

    def _load(self, index: int) -> np.ndarray:
        tokens = read_shard(self.paths[index])
        check_token_ids(tokens, self.vocab_size, self.paths[index])
        return tokens

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.shard, self.offset)

    def advance_shard(self) -> None:
        """Move to the start of the next shard, wrapping around."""
        self.shard = (self.shard + 1) % len(self.paths)
        self.tokens, self.offset = self._load(self.shard), 0

    def take(self, n: int) -> np.ndarray:
        """The next n tokens as int64."""
        chunks: list[np.ndarray] = []
        while n > 0:
            if self.offset >= len(self.tokens):
                self.advance_shard()
            k = min(n, len(self.tokens) - self.offset)
            chunks.append(np.asarray(self.tokens[self.offset : self.offset + k], dtype=np.int64))
            self.offset += k
            n -= k
        return np.concatenate(chunks)


class Batch(NamedTuple):
    """One micro-batch: inputs, targets (inputs shifted by one), and document segment ids or None."""

    x: torch.Tensor
    y: torch.Tensor
    segments: torch.Tensor | None = None


def _check_rows(micro_tokens: int, seq_len: int) -> None:
    if micro_tokens % seq_len:
        raise ValueError(f"micro-batch of {micro_tokens} tokens is not a whole number of {seq_len}-token sequences")


class DistributedBatches:
    """Micro-batches (x, y) [micro_tokens/seq_len, seq_len] for this rank, y = x shifted by one;
    `next(seq_len)` changes the row length (the tokens taken stay micro_tokens + 1 per rank)."""

    def __init__(self, stream: TokenStream, info: DistInfo, micro_tokens: int, seq_len: int) -> None:
        _check_rows(micro_tokens, seq_len)
        self.stream, self.info, self.micro_tokens, self.seq_len = stream, info, micro_tokens, seq_len

    def next(self, seq_len: int | None = None) -> Batch:
        seq_len = seq_len or self.seq_len
        _check_rows(self.micro_tokens, seq_len)
        span = self.micro_tokens + 1
        chunk = self.stream.take(span * self.info.world_size)
        local = to_device(torch.from_numpy(chunk[self.info.rank * span : (self.info.rank + 1) * span]), self.info.device)
        return Batch(local[:-1].view(-1, seq_len), local[1:].view(-1, seq_len))


def to_device(tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One host-to-device copy of a micro-batch's tokens (x and y are views of it). On CUDA the
    tokens are staged in pinned memory so that the copy is truly asynchronous: the H200 profile
    (../shared/gpu-measurements) spent 17.9 ms of CPU per step in two pageable copies, x and y."""
    if device.type != "cuda":
        return tokens.to(device)
    return tokens.pin_memory().to(device, non_blocking=True)


def validation_tokens(paths: list[Path], max_tokens: int, seq_len: int, vocab_size: int | None = None) -> torch.Tensor:
    """The fixed validation subset: the first `max_tokens` tokens (0 = all), cut to whole sequences + 1.

    With `vocab_size`, the ids of the subset are checked (positions count from each shard's start).
    """
    if not paths:
        raise DataError("no validation shards found")
    pieces, total = [], 0
    for path in paths:
        tokens = read_shard(path)
        if max_tokens:
            tokens = tokens[: max_tokens + 1 - total]  # only what is used (and checked) is read
        check_token_ids(tokens, vocab_size, path)
        tokens = np.asarray(tokens, dtype=np.int64)
        pieces.append(tokens)
        total += len(tokens)
        if max_tokens and total >= max_tokens + 1:
            break
    stream = np.concatenate(pieces)[: max_tokens + 1 if max_tokens else None]
    usable = (len(stream) - 1) // seq_len * seq_len
    if usable <= 0:
        raise DataError(f"validation split has {len(stream)} tokens: fewer than one sequence of {seq_len} + 1")
    return torch.from_numpy(stream[: usable + 1])
