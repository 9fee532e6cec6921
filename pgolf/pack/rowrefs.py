"""Row references: a row of a quantized matrix stored as its difference from another row.

Trained embeddings hold near-duplicate rows (tokens rarely or never seen drift together), which an
LZ or context-mixing coder finds once rows are sorted by similarity (the records' per-group
packing, PR #1586) and per-column distributions cannot. Here each such *child* row names a
*parent*; references form a forest whose roots are stored as they are. The stored form of a
matrix is its root rows (in index order) followed by its child rows as differences from their
parents, ordered by depth in the forest, then index: ``refs`` is int32 ``[2, n]`` (children,
parents). Differences of b-bit symbols need b + 1 bits, so references apply up to 7 bits.
"""

from __future__ import annotations

import numpy as np

from pgolf.errors import ArtifactError

MAX_BITS = 7


def parents_of(refs: np.ndarray, rows: int) -> np.ndarray:
    """Parent of each row (-1 for roots); ArtifactError unless `refs` is a valid forest's edges."""
    if refs.ndim != 2 or refs.shape[0] != 2 or refs.shape[1] > rows:
        raise ArtifactError(f"row references of shape {list(refs.shape)} for {rows} rows")
    child, parent = refs.astype(np.int64)
    if child.size and (min(child.min(), parent.min()) < 0 or max(child.max(), parent.max()) >= rows):
        raise ArtifactError(f"row references outside rows 0..{rows - 1}")
    if np.unique(child).size != child.size or np.any(child == parent):
        raise ArtifactError("row references: a row has two parents or is its own")
    parents = np.full(rows, -1, dtype=np.int64)
    parents[child] = parent
    return parents


def decode_order(parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(child rows in stored order: depth, then index; their depths); ArtifactError on a cycle."""
    depth = np.zeros(parents.size, dtype=np.int64)
    known = parents < 0
    while not known.all():
        ready = ~known & known[np.maximum(parents, 0)]
        if not ready.any():
            raise ArtifactError("row references form a cycle")
        depth[ready] = depth[parents[ready]] + 1
        known |= ready
    children = np.flatnonzero(parents >= 0)
    order = children[np.lexsort((children, depth[children]))]
    return order, depth[order]


def reference(q: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(root rows, child rows as differences) of int8 `q`: the stored form."""
    parents = parents_of(refs, q.shape[0])
    order, _ = decode_order(parents)
    diff = q[order].astype(np.int16) - q[parents[order]].astype(np.int16)
    if diff.size and np.abs(diff).max() > 127:
        raise ValueError("row differences exceed int8: references apply up to 7 bits")
    return q[parents < 0], diff.astype(np.int8)


def dereference(roots: np.ndarray, diffs: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Inverse of `reference`: the int8 matrix."""
    rows = roots.shape[0] + diffs.shape[0]
    parents = parents_of(refs, rows)
    order, depths = decode_order(parents)
    if order.size != diffs.shape[0]:
        raise ArtifactError(f"{order.size} row references for {diffs.shape[0]} stored differences")
    out = np.empty((rows, roots.shape[1]), dtype=np.int16)
    out[parents < 0] = roots
    for level in np.split(np.arange(order.size), np.flatnonzero(np.diff(depths)) + 1):  # parents first
        out[order[level]] = out[parents[order[level]]] + diffs[level]
    if np.abs(out).max(initial=0) > 127:
        raise ArtifactError("row references rebuild symbols outside int8")
    return out.astype(np.int8)
