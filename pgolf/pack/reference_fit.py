"""Choose the row references of `pgolf.pack.rowrefs` (encoder side; the loader never imports this).

Each row's nearest other row (Euclidean, through one matrix product per block of rows) is a
candidate parent. A reference is kept where coding the difference is estimated cheaper than
coding the row: the row's cost at the matrix's order-0 entropy against the difference's at the
entropy of a two-sided geometric distribution with the same mean |difference|, plus the two
stored indices. Candidates are taken best gain first, skipping any that would close a cycle.
"""

from __future__ import annotations

import numpy as np

from pgolf.pack.entropy import order0_entropy_bits
from pgolf.pack.rowrefs import MAX_BITS

BLOCK_ROWS = 1024
THETAS = np.linspace(1e-4, 0.9999, 4096)


def geometric_bits(mean_abs: np.ndarray) -> np.ndarray:
    """Entropy in bits of a two-sided geometric distribution P(k) ~ theta^|k| with mean |k| given."""
    t = THETAS
    mean = 2 * t / ((1 - t) * (1 + t))
    p0 = (1 - t) / (1 + t)
    # H = -sum P log P with P(k) = p0 t^|k|: -log p0 - E|k| log t
    bits = -np.log2(p0) - mean * np.log2(t)
    return np.interp(mean_abs, mean, bits)


def nearest_rows(x: np.ndarray) -> np.ndarray:
    """Index of each row's nearest other row (squared Euclidean distance)."""
    norms = (x * x).sum(1)
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], BLOCK_ROWS):
        block = x[start : start + BLOCK_ROWS]
        dist = norms[start : start + BLOCK_ROWS, None] + norms[None, :] - 2 * block @ x.T
        dist[np.arange(block.shape[0]), np.arange(start, start + block.shape[0])] = np.inf
        out[start : start + block.shape[0]] = dist.argmin(1)
    return out


def fit_references(q: np.ndarray, bits: int) -> np.ndarray:
    """int32 [2, n] (children, parents) for int8 `q` of `bits`; n = 0 where nothing pays."""
    rows, cols = q.shape
    if bits > MAX_BITS or rows < 2 or cols == 0:
        return np.zeros((2, 0), dtype=np.int32)
    x = q.astype(np.float32)
    parent = nearest_rows(x)
    mean_abs = np.abs(x - x[parent]).mean(1)
    raw_bits = cols * order0_entropy_bits(q) / q.size
    gain = raw_bits - cols * geometric_bits(mean_abs) - 2 * np.log2(rows)
    root = np.arange(rows)

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    kept = []
    for child in np.argsort(-gain, kind="stable"):
        if gain[child] <= 0:
            break
        a, b = find(child), find(parent[child])
        if a != b:
            root[a] = b
            kept.append((child, parent[child]))
    return np.asarray(kept, dtype=np.int32).T.reshape(2, -1)
