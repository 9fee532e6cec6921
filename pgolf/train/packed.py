"""Document-packed micro-batches: the records' DocumentPackingLoader (PR #1530 lineage), own code.

Each rank's micro-batch is one row [1, micro_tokens] cut from the stream, with segment ids
(`pgolf.model.docmask.document_segments`) that start a segment at every BOS and every `seq_len`
tokens inside a document, so attention never crosses a document and no piece is longer than the
training length. A row is a span of micro_tokens + 1 tokens (inputs and shifted targets). Spans
never cross a shard's end: the rest of the shard is skipped and the next shard is read from its
first BOS, as the records do; the very first shard, too, is read from its first BOS.

Unlike the records, which decide the skip for the whole round of world_size spans, every span is
drawn on its own and rank r takes the r-th span of each round, so the tokens of a step depend only
on batch_tokens and grad_accum_steps, never on the world size. The stream position (shard,
offset) is all the state: offset 0 means "at a shard start, not yet aligned to its first BOS",
so a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from pgolf.dist import DistInfo
from pgolf.errors import DataError
from pgolf.model.docmask import document_segments
from pgolf.train.data import Batch, DistributedBatches, TokenStream


def first_index(tokens: np.ndarray, token: int) -> int | None:
    """Position of the first `token` in `tokens`, or None."""
    hits = np.flatnonzero(tokens == token)
    return int(hits[0]) if hits.size else None


def take_document_span(stream: TokenStream, span: int, bos_id: int) -> np.ndarray:
    """The next `span` tokens inside one shard (a view); a shard is entered at its first BOS."""
    for _ in range(len(stream.paths) + 1):
        if stream.offset == 0:
            start = first_index(stream.tokens, bos_id)
            stream.offset = len(stream.tokens) if start is None else start
        if stream.offset + span <= len(stream.tokens):
            out = stream.tokens[stream.offset : stream.offset + span]
            stream.offset += span
            return out
        stream.advance_shard()
    raise DataError(
        f"{stream.paths[0].parent}: no training shard holds a BOS (id {bos_id}) followed by {span - 1} more tokens "
        f"(a packed micro-batch + 1): lower batch_tokens/grad_accum_steps, or check the shards' bos_id"
    )


class PackedBatches:
    """Micro-batches Batch(x, y, segments), each [1, micro_tokens], for this rank."""

    def __init__(self, stream: TokenStream, info: DistInfo, micro_tokens: int, seq_len: int, bos_id: int) -> None:
        self.stream, self.info, self.micro_tokens, self.seq_len, self.bos_id = stream, info, micro_tokens, seq_len, bos_id

    def next(self, seq_len: int | None = None) -> Batch:
        spans = [take_document_span(self.stream, self.micro_tokens + 1, self.bos_id) for _ in range(self.info.world_size)]
        local = torch.from_numpy(np.asarray(spans[self.info.rank], dtype=np.int64)).to(self.info.device, non_blocking=True)
        x, y = local[None, :-1], local[None, 1:]
        return Batch(x, y, document_segments(x, self.bos_id, max_tokens=seq_len or self.seq_len))


class Batches(Protocol):
    stream: TokenStream

    def next(self, seq_len: int | None = None) -> Batch: ...


# train.loader -> (stream, info, micro_tokens, seq_len, bos_id) -> this rank's micro-batches.
LOADERS: dict[str, Callable[[TokenStream, DistInfo, int, int, int], Batches]] = {
    "sequential": lambda stream, info, micro, seq_len, bos_id: DistributedBatches(stream, info, micro, seq_len),
    "packed": PackedBatches,
}
