"""The `ans` symbol stream: rANS over runs of symbols, each run coded with one of K distributions.

A stream's matrices are given in their stored orientation (transposed when the stream is
column-major); a *run* is one row of a stored matrix, so in column-major streams a run is one
column of a weight, i.e. one input feature, whose spread GPTQ and training leave uneven (the
context that ZPAQ's adaptive models find in the column-major layout of the records' per-group
packing, PR #1586 / #1667, captured here by a stored class per run). K = 1 is one order-0
distribution for the whole stream. The fit (K and each run's class) is in `pgolf.pack.cluster_fit`.

Blob layout (little-endian)::

    u8 K (1..MAX_CLUSTERS) | i8 min_symbol | u8 alphabet - 1 | u32 M
    M bytes: brotli of  counts (K x alphabet u32) | payload words per class (K u32) | class per run (u8, only when K > 1)
    the rANS words of class 0, 1, ..., K-1 (each `pgolf.pack.entropy` coded, with its sentinel)

Decoding checks that every count matches the symbols its class holds, which with the entropy
coder's sentinel makes a payload read with the wrong shapes an ArtifactError.
"""

from __future__ import annotations

import struct

import numpy as np

from pgolf.errors import ArtifactError
from pgolf.pack.codecs import compress, decompress
from pgolf.pack.entropy import Codebook, decode, encode

MAX_CLUSTERS = 64
BLOB_HEAD = struct.Struct("<BbBI")
MODEL_CODEC = "brotli"
MODEL_QUALITY = 11


def alphabet(mats: list[np.ndarray]) -> tuple[int, int]:
    """(min_symbol, size) of the symbol range the stream's matrices use."""
    values = [m for m in mats if m.size]
    if not values:
        return 0, 1
    lo = min(int(m.min()) for m in values)
    return lo, max(int(m.max()) for m in values) - lo + 1


def class_symbols(mats: list[np.ndarray], classes: list[np.ndarray], k: int) -> np.ndarray:
    """The symbols of class `k`: each matrix's runs of that class, in stream order."""
    parts = [m[c == k].ravel() for m, c in zip(mats, classes)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int8)


def encode_runs(mats: list[np.ndarray], classes: list[np.ndarray], clusters: int) -> bytes:
    """Code int8 matrices (runs = rows), run r of matrix i with distribution `classes[i][r]`."""
    lo, size = alphabet(mats)
    counts, words = [], []
    for k in range(clusters):
        symbols = class_symbols(mats, classes, k).astype(np.int64)
        hist = np.bincount(symbols - lo, minlength=size) if symbols.size else np.zeros(size, dtype=np.int64)
        counts.append(hist)
        words.append(encode(symbols, Codebook(lo, tuple(int(c) for c in hist))) if symbols.size else b"")
    model = np.asarray(counts, dtype="<u4").tobytes() + np.asarray([len(w) // 4 for w in words], dtype="<u4").tobytes()
    if clusters > 1:
        model += np.concatenate([c.astype(np.uint8) for c in classes] or [np.zeros(0, np.uint8)]).tobytes()
    packed = compress(model, MODEL_CODEC, MODEL_QUALITY)
    return BLOB_HEAD.pack(clusters, lo, size - 1, len(packed)) + packed + b"".join(words)


def decode_runs(blob: bytes, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """The int8 matrices of `shapes` from an `encode_runs` blob; ArtifactError on any mismatch."""
    if len(blob) < BLOB_HEAD.size:
        raise ArtifactError(f"ans stream of {len(blob)} bytes is shorter than its {BLOB_HEAD.size}-byte head")
    clusters, lo, size_m1, model_len = BLOB_HEAD.unpack_from(blob, 0)
    size = size_m1 + 1
    if not 1 <= clusters <= MAX_CLUSTERS:
        raise ArtifactError(f"ans stream: {clusters} classes (allowed 1..{MAX_CLUSTERS})")
    if lo + size - 1 > 127:
        raise ArtifactError(f"ans stream: symbols {lo}..{lo + size - 1} outside int8")
    runs = sum(rows for rows, _ in shapes)
    expected = 4 * clusters * size + 4 * clusters + (runs if clusters > 1 else 0)
    start = BLOB_HEAD.size
    if model_len > len(blob) - start:
        raise ArtifactError(f"ans stream: model section of {model_len} bytes overruns the stream")
    model = decompress(blob[start : start + model_len], MODEL_CODEC, expected)
    counts = np.frombuffer(model, dtype="<u4", count=clusters * size).reshape(clusters, size).astype(np.int64)
    word_counts = np.frombuffer(model, dtype="<u4", count=clusters, offset=4 * clusters * size).astype(np.int64)
    classes_all = np.frombuffer(model, dtype=np.uint8, offset=4 * clusters * (size + 1)) if clusters > 1 else np.zeros(runs, dtype=np.uint8)
    if classes_all.size and int(classes_all.max()) >= clusters:
        raise ArtifactError(f"ans stream: a run's class {int(classes_all.max())} is not below {clusters}")
    classes, first = [], 0
    for rows, _ in shapes:
        classes.append(classes_all[first : first + rows])
        first += rows
    words_at = start + model_len
    if words_at + 4 * int(word_counts.sum()) != len(blob):
        raise ArtifactError(f"ans stream: {len(blob) - words_at} payload bytes, its model says {4 * int(word_counts.sum())}")
    decoded = []
    for k in range(clusters):
        held = sum(int((c == k).sum()) * cols for c, (_, cols) in zip(classes, shapes))
        if int(counts[k].sum()) != held:
            raise ArtifactError(f"ans stream: class {k} counts {int(counts[k].sum())} symbols, its runs hold {held}")
        words = blob[words_at : words_at + 4 * int(word_counts[k])]
        words_at += len(words)
        decoded.append(decode(words, Codebook(lo, tuple(int(c) for c in counts[k])), held) if held else np.zeros(0, dtype=np.int8))
    out, taken = [], [0] * clusters
    for c, (rows, cols) in zip(classes, shapes):
        mat = np.empty((rows, cols), dtype=np.int8)
        for k in range(clusters):
            mask = c == k
            held = int(mask.sum())
            mat[mask] = decoded[k][taken[k] : taken[k] + held * cols].reshape(held, cols)
            taken[k] += held * cols
        out.append(mat)
    return out
