"""Entropy coding of quantized symbols with ANS (the `constriction` package).

A `Codebook` is the exact symbol histogram of a tensor group (or one tensor) over the integer
range [min_symbol, min_symbol + len(counts) - 1]; the coder uses probabilities ``count / total``
(constriction quantizes them to its 24-bit precision deterministically), so the coded size is
within a fraction of a percent of the order-0 entropy of the symbols. Payloads are the coder's
32-bit words, little-endian. Each payload ends (in decoding order) with a fixed 24-bit
sentinel coded uniformly: the decoder checks it and that the words are consumed exactly, so a
payload read with the wrong symbol count is detected (an exhausted ANS decoder would otherwise
go on yielding symbols).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np

from pgolf.errors import ArtifactError

MAX_ALPHABET = 256
SENTINEL_ALPHABET = 4096
SENTINEL = np.array([0x5A5, 0xA5A], dtype=np.int32)


@dataclass(frozen=True)
class Codebook:
    """Symbol counts over a contiguous integer range starting at `min_symbol`."""

    min_symbol: int
    counts: tuple[int, ...]

    def validate(self) -> None:
        if not 1 <= len(self.counts) <= MAX_ALPHABET:
            raise ArtifactError(f"codebook alphabet of {len(self.counts)} symbols (allowed 1..{MAX_ALPHABET})")
        if not -128 <= self.min_symbol <= 127 or self.min_symbol + len(self.counts) - 1 > 127:
            raise ArtifactError(f"codebook range starts at {self.min_symbol} with {len(self.counts)} symbols: outside int8")
        if any((not isinstance(c, int)) or isinstance(c, bool) or c < 0 for c in self.counts) or sum(self.counts) == 0:
            raise ArtifactError("codebook counts must be non-negative integers, not all zero")

    def model(self) -> constriction.stream.model.Categorical:
        probs = np.asarray(self.counts, dtype=np.float64)
        return constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)

    def to_json(self) -> dict:
        return {"min_symbol": self.min_symbol, "counts": list(self.counts)}


def fit_codebook(symbols: np.ndarray) -> Codebook:
    """The exact histogram of `symbols` (integers within int8) over their observed range."""
    symbols = np.asarray(symbols).ravel().astype(np.int64)
    if symbols.size == 0:
        return Codebook(0, (1,))
    lo, hi = int(symbols.min()), int(symbols.max())
    counts = np.bincount(symbols - lo, minlength=hi - lo + 1)
    return Codebook(lo, tuple(int(c) for c in counts))


def order0_entropy_bits(symbols: np.ndarray) -> float:
    """``-sum_s n_s log2(n_s / n)``: the order-0 entropy of the sequence, in bits."""
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return 0.0
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / symbols.size
    return float(-(counts * np.log2(p)).sum())


def encode(symbols: np.ndarray, codebook: Codebook) -> bytes:
    """ANS-code `symbols` (all within the codebook's range) into little-endian 32-bit words."""
    idx = np.asarray(symbols).ravel().astype(np.int64) - codebook.min_symbol
    if idx.size and (idx.min() < 0 or idx.max() >= len(codebook.counts)):
        raise ValueError("symbols outside the codebook's range")
    if len(codebook.counts) == 1:
        return b""
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(SENTINEL, constriction.stream.model.Uniform(SENTINEL_ALPHABET))
    coder.encode_reverse(idx.astype(np.int32), codebook.model())
    return coder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, codebook: Codebook, count: int) -> np.ndarray:
    """Decode `count` symbols (int8); ArtifactError unless `data` holds exactly those."""
    codebook.validate()
    if len(codebook.counts) == 1:
        if data:
            raise ArtifactError("single-symbol codebook with a non-empty payload")
        return np.full(count, codebook.min_symbol, dtype=np.int8)
    if len(data) % 4:
        raise ArtifactError(f"ANS payload of {len(data)} bytes is not a whole number of 32-bit words")
    try:
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        coder = constriction.stream.stack.AnsCoder(words)
        idx = coder.decode(codebook.model(), count) if count else np.zeros(0, dtype=np.int32)
        sentinel = coder.decode(constriction.stream.model.Uniform(SENTINEL_ALPHABET), len(SENTINEL))
        exact = coder.is_empty() and np.array_equal(sentinel, SENTINEL)
    except (ValueError, RuntimeError, TypeError, OverflowError) as exc:
        raise ArtifactError(f"ANS payload does not decode ({type(exc).__name__}: {exc})") from None
    if not exact:
        raise ArtifactError("ANS payload does not hold exactly the table's symbol count (sentinel or length mismatch)")
    return (np.asarray(idx, dtype=np.int64) + codebook.min_symbol).astype(np.int8)


def entropy_bytes(bits: float) -> int:
    return math.ceil(bits / 8)
