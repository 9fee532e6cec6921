"""The order in which score-first TTT evaluates documents (records: `_build_ttt_global_batches` of
#1610 -> #2135), and where its global phases fall.

Documents are cut into batches of `batch_docs`: consecutive in the stream (`stream`), or sorted by
length so that a batch's documents take about as many chunks (`length`: little padding; the batch
with the longest document first, as the records). Ranks share batches (index modulo world size) and
global phases fall between batches. `rearranged` lays a stream out in evaluation order: the
legality check perturbs "everything after t" in that order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pgolf.config.eval import EvalTTTParams
from pgolf.eval.bpb import ValStream
from pgolf.eval.sliding import segments
from pgolf.eval.windows import Window


def documents(stream: ValStream) -> list[tuple[int, int]]:
    """The documents TTT scores, as segments [begin, end) in stream order (each runs to the next BOS inclusive)."""
    return segments(stream, doc_bounded=True)



def stream_batches(lengths: np.ndarray, batch_docs: int) -> list[np.ndarray]:
    """Consecutive runs of batch_docs documents in stream order."""
    order = np.arange(lengths.size)
    return [order[i : i + batch_docs] for i in range(0, order.size, batch_docs)]


def length_batches(lengths: np.ndarray, batch_docs: int) -> list[np.ndarray]:
    """Documents sorted by length (stable) cut into runs of batch_docs, the batch with the longest
    document first (the records: the partial batch, of the longest documents, leads)."""
    by_length = np.argsort(lengths, kind="stable")
    batches = [by_length[i : i + batch_docs] for i in range(0, by_length.size, batch_docs)]
    longest = [-int(lengths[b].max()) for b in batches]
    return [batches[i] for i in np.argsort(longest, kind="stable")]


@dataclass(frozen=True)
class DocOrder:
    batches: Callable[[np.ndarray, int], list[np.ndarray]]  # (document lengths, batch_docs) -> batches of document indices, in evaluation order
    together: bool  # a batch's documents start together, the next batch when all lanes are free


DOC_ORDERS: dict[str, DocOrder] = {
    "stream": DocOrder(stream_batches, together=False),
    "length": DocOrder(length_batches, together=True),
}


def evaluation_batches(stream: ValStream, params: EvalTTTParams) -> list[np.ndarray]:
    """Indices into `documents(stream)`, batch by batch, in evaluation order (ranks share batches; phases fall between them)."""
    lengths = np.array([e - b for b, e in documents(stream)], dtype=np.int64)
    return DOC_ORDERS[params.doc_order].batches(lengths, params.batch_docs)


def evaluation_order(stream: ValStream, params: EvalTTTParams) -> np.ndarray:
    """Indices into `documents(stream)` in evaluation order: the batches one after another."""
    batches = evaluation_batches(stream, params)
    return np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)


def phase_boundaries(batch_sizes: list[int], params: EvalTTTParams) -> list[int]:
    """Batch counts after which a global phase runs: phase k after the first batches holding at least
    global_phase_docs * k / global_phases documents (none after the last batch)."""
    if params.global_phase_docs <= 0:
        return []
    done = np.cumsum(batch_sizes)
    wanted = [params.global_phase_docs * k // params.global_phases for k in range(1, params.global_phases + 1)]
    cuts = {int(np.searchsorted(done, w)) + 1 for w in wanted if w > 0}
    return sorted(c for c in cuts if c < len(batch_sizes))


def rearranged(stream: ValStream, order: np.ndarray) -> tuple[ValStream, np.ndarray]:
    """The stream with its documents in `order` (indices into `documents(stream)`), and `source`:
    position j of the new stream is position source[j] of the old one as a target (a permutation).

    Each document moves with its last target, the next BOS, so the stream must end with a BOS."""
    if stream.tokens[-1] != stream.bos_id:
        raise ValueError("rearranging documents needs a stream that ends with a BOS (each document's last target)")
    docs = documents(stream)
    source = [np.zeros(1, dtype=np.int64)]
    for d in order:
        begin, end = docs[int(d)]
        source.append(np.arange(begin + 1, end, dtype=np.int64))
    source = np.concatenate(source)
    return ValStream(stream.tokens[source], stream.target_bytes[source], stream.bos_id), source


def global_pieces(stream_docs: list[tuple[int, int]], seq_len: int) -> list[Window]:
    """Training sequences of a global phase: each document [begin, end) cut into pieces of at most
    seq_len targets (inputs from the piece's first token; documents never share a sequence)."""
    return [Window(s, min(s + seq_len, e - 1), s + 1) for b, e in stream_docs for s in range(b, e - 1, seq_len)]
