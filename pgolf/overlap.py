"""Train/validation overlap audit: no validation document may appear in the training shards.

Why: an audit of 34 record PRs (openai/parameter-golf #2127) found 15 whose training shards held
80 % of the validation documents, through a data-prep script's default; maintainers now reject on
a train/val overlap fingerprint.

A document is the token sequence between two BOS marks (BOS excluded). Its fingerprint is the
8-byte BLAKE2b digest of its uint16 tokens. Every validation document of at least `min_tokens`
tokens is fingerprinted; every training shard is then streamed (memory-mapped, one shard per task,
`workers` processes), each complete document in it fingerprinted, and the first validation
document found is reported. A document cut by a shard boundary is stitched from the tail of one
shard and the head of the next, so nothing escapes by straddling files. A fingerprint match is
confirmed by comparing the tokens, so a hash collision cannot fail a clean run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgolf.data.shards import read_shard
from pgolf.errors import AuditError

DIGEST_BYTES = 8


def fingerprint(doc: np.ndarray) -> int:
    """The 64-bit fingerprint of one document's tokens (BOS excluded), as an unsigned int."""
    data = np.ascontiguousarray(doc, dtype="<u2").tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest(), "little")


def document_spans(tokens: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the complete documents of a stream piece: the tokens after each BOS up to
    the next BOS. The piece before the first BOS (the head) and after the last BOS (the tail) are
    left out: their documents may continue in the neighbouring shard."""
    bos = np.flatnonzero(tokens == bos_id)
    return bos[:-1] + 1, bos[1:]


def fingerprint_spans(tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, min_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fingerprints (uint64), starts and ends of the documents [start, end) with >= `min_tokens` tokens."""
    keep = (ends - starts) >= min_tokens
    starts, ends = starts[keep], ends[keep]
    data = memoryview(np.ascontiguousarray(tokens, dtype="<u2")).cast("B")
    digests = bytearray(DIGEST_BYTES * len(starts))
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        digests[DIGEST_BYTES * i : DIGEST_BYTES * (i + 1)] = hashlib.blake2b(data[2 * s : 2 * e], digest_size=DIGEST_BYTES).digest()
    return np.frombuffer(bytes(digests), dtype="<u8"), starts, ends


@dataclass(frozen=True)
class ShardScan:
    """What one training shard contributes: fingerprints of its complete documents, and the raw
    head (before its first BOS) and tail (from its last BOS on) for stitching with its neighbours."""

    path: Path
    tokens: int
    fingerprints: np.ndarray  # uint64 [docs]
    starts: np.ndarray  # token offset of each fingerprinted document in the shard
    ends: np.ndarray
    head: np.ndarray  # tokens before the first BOS (the whole shard when it has none)
    tail: np.ndarray | None  # tokens from the last BOS on (None when the shard has no BOS)


def scan_shard(path: Path, bos_id: int, min_tokens: int) -> ShardScan:
    tokens = read_shard(path)
    bos = np.flatnonzero(tokens == bos_id)
    if bos.size == 0:
        none = np.zeros(0, np.int64)
        return ShardScan(path, int(tokens.size), np.zeros(0, np.uint64), none, none, np.array(tokens), None)
    prints, starts, ends = fingerprint_spans(tokens, *document_spans(tokens, bos_id), min_tokens)
    return ShardScan(path, int(tokens.size), prints, starts, ends, np.array(tokens[: bos[0]]), np.array(tokens[bos[-1] :]))


@dataclass(frozen=True)
class OverlapResult:
    val_docs_checked: int  # validation documents with >= min_tokens tokens
    train_docs_checked: int
    train_tokens_scanned: int
    train_files: int


def _scans(paths: list[Path], bos_id: int, min_tokens: int, workers: int) -> Iterator[ShardScan]:
    if workers <= 1 or len(paths) <= 1:
        yield from (scan_shard(p, bos_id, min_tokens) for p in paths)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        yield from pool.map(scan_shard, paths, [bos_id] * len(paths), [min_tokens] * len(paths))


def check_overlap(
    val_docs: list[np.ndarray],
    train_paths: list[Path],
    bos_id: int,
    min_tokens: int = 1,
    workers: int = 1,
    describe: Callable[[int], str] = lambda i: f"validation document {i}",
    progress: Callable[[Iterable[ShardScan]], Iterable[ShardScan]] = lambda scans: scans,
) -> OverlapResult:
    """AuditError naming the first validation document (in validation order) that also appears as a
    whole training document. `val_docs` are documents as split_documents gives them (each starts
    with BOS); `describe(i)` names validation document i in the error; `progress` wraps the iterable of
    shard scans (e.g. pgolf.progress.progress)."""
    index: dict[int, int] = {}
    for i, doc in enumerate(val_docs):
        body = doc[1:]
        if len(body) >= min_tokens:
            index.setdefault(fingerprint(body), i)
    val_prints = np.fromiter(index.keys(), dtype=np.uint64, count=len(index))
    hits: list[tuple[int, str]] = []  # (validation index, where in training)
    train_docs = train_tokens = 0
    carry: np.ndarray | None = None  # an open document: from a BOS to the end of the previous shard(s)

    def confirm(doc: np.ndarray, where: str) -> None:
        i = index.get(fingerprint(doc))
        if i is not None and np.array_equal(doc, val_docs[i][1:]):
            hits.append((i, where))

    for scan in progress(_scans(train_paths, bos_id, min_tokens, workers)):
        train_tokens += scan.tokens
        train_docs += len(scan.fingerprints)
        matches = np.flatnonzero(np.isin(scan.fingerprints, val_prints)).tolist()
        if matches:
            tokens = read_shard(scan.path)
            for j in matches:
                start, end = int(scan.starts[j]), int(scan.ends[j])
                confirm(np.asarray(tokens[start:end]), f"{scan.path.name}, the document at token {start - 1}")
        if carry is not None:
            carry = np.concatenate((carry, scan.head))
            if scan.tail is not None:  # the open document ends at this shard's first BOS
                if len(carry) - 1 >= min_tokens:
                    train_docs += 1
                    confirm(carry[1:], f"{scan.path.name} (a document continued from the previous shard)")
                carry = None
        if scan.tail is not None:
            carry = scan.tail
    if carry is not None and len(carry) - 1 >= min_tokens:  # the last document ends with the data
        train_docs += 1
        confirm(carry[1:], f"{train_paths[-1].name} (its last document)")
    if hits:
        i, where = min(hits)
        others = len({h for h, _ in hits}) - 1
        more = f"; {others} more validation documents are in the training data too" if others else ""
        raise AuditError(f"{describe(i)} also appears in the training data ({where}){more}: training must not see validation documents")
    return OverlapResult(len(index), train_docs, train_tokens, len(train_paths))

