"""Fit the classes of the `ans` stream coder (`pgolf.pack.runs`): which distribution codes each run.

Runs (rows of the stored matrices: weight columns in a column-major stream) are split into K
classes by a k-means on code length: start from K quantile bins of each run's mean |symbol|,
then alternately refit each class's histogram and move every run to the class that codes it in
the fewest bits. K is chosen among 1, 2, 4, ... up to the cap by the exact total: the ideal
coded bits of every class plus the bytes of the stored model section (counts and classes).
Encoder-side only: the loader never imports this.
"""

from __future__ import annotations

import numpy as np

from pgolf.pack.codecs import compress
from pgolf.pack.runs import BLOB_HEAD, MODEL_CODEC, MODEL_QUALITY, alphabet

ITERATIONS = 12
WORD_SLACK_BYTES = 8  # an rANS class payload ends with its state and a sentinel word


def run_histograms(mats: list[np.ndarray], lo: int, size: int) -> np.ndarray:
    """[runs, size] symbol counts of every run of every matrix, in stream order."""
    parts = []
    for m in mats:
        rows = m.shape[0]
        flat = (np.arange(rows, dtype=np.int64)[:, None] * size + (m.astype(np.int64) - lo)).ravel()
        parts.append(np.bincount(flat, minlength=rows * size).reshape(rows, size))
    return np.concatenate(parts) if parts else np.zeros((0, size), dtype=np.int64)


def code_bits(hist: np.ndarray) -> float:
    """Ideal bits of coding the symbols counted in `hist` with their own distribution."""
    n = hist.sum()
    nz = hist[hist > 0]
    return float(-(nz * np.log2(nz / n)).sum()) if n else 0.0


def assign(hist: np.ndarray, k: int) -> np.ndarray:
    """Class of each run for K = k (k-means on code length from quantile-bin seeds)."""
    runs, size = hist.shape
    if k == 1 or runs <= 1:
        return np.zeros(runs, dtype=np.int64)
    centre = np.abs(np.arange(size) - (size - 1) / 2)
    spread = (hist * centre).sum(1) / np.maximum(hist.sum(1), 1)
    classes = np.empty(runs, dtype=np.int64)
    for c, chunk in enumerate(np.array_split(np.argsort(spread, kind="stable"), k)):
        classes[chunk] = c
    for _ in range(ITERATIONS):
        books = np.stack([hist[classes == c].sum(0) for c in range(k)]).astype(np.float64) + 1e-3
        logp = np.log2(books / books.sum(1, keepdims=True))
        moved = (-(hist @ logp.T)).argmin(1)
        if np.array_equal(moved, classes):
            break
        classes = moved
    used = np.unique(classes)  # classes left empty are dropped, the rest renumbered in order
    return np.searchsorted(used, classes)


def fitted_bytes(hist: np.ndarray, classes: np.ndarray) -> float:
    """Estimated stream bytes: ideal coded bits + the compressed model section + fixed parts."""
    k = int(classes.max()) + 1 if classes.size else 1
    books = np.stack([hist[classes == c].sum(0) for c in range(k)]) if classes.size else np.zeros((1, hist.shape[1]), dtype=np.int64)
    model = books.astype("<u4").tobytes() + np.zeros(k, dtype="<u4").tobytes() + (classes.astype(np.uint8).tobytes() if k > 1 else b"")
    bits = sum(code_bits(b) for b in books)
    return bits / 8 + len(compress(model, MODEL_CODEC, MODEL_QUALITY)) + BLOB_HEAD.size + WORD_SLACK_BYTES * k


def fit_classes(mats: list[np.ndarray], max_clusters: int) -> tuple[list[np.ndarray], int]:
    """(class of each run per matrix, K): the K in 1, 2, 4, ... <= max_clusters of fewest bytes."""
    lo, size = alphabet(mats)
    hist = run_histograms(mats, lo, size)
    classes = assign(hist, 1)
    best = fitted_bytes(hist, classes)
    k = 2
    while k <= min(max_clusters, hist.shape[0]):
        candidate = assign(hist, k)
        cost = fitted_bytes(hist, candidate)
        if cost < best:
            best, classes = cost, candidate
        k *= 2
    out, first = [], 0
    for m in mats:
        out.append(classes[first : first + m.shape[0]].astype(np.uint8))
        first += m.shape[0]
    return out, int(classes.max()) + 1 if classes.size else 1
