"""Symbol-stream transforms (`pack.transform`): a stream's int8 symbols -> bytes, before its coder.

`trits` (issue 15 item 4; the ternary record #640's base-3 packing): trits in {-1, 0, 1} stored
5 per byte, d0 + 3 d1 + 9 d2 + 27 d3 + 81 d4 with d = q + 1 (3^5 = 243 <= 256), the last byte
padded with d = 0: 1.6 bits per trit before the coder. `bits` (issue 15 item 5, the Q^2
proposal): each symbol as its `bits`-bit level index u = q - lo(bits) on the tensor's grid, Gray
coded (g = u ^ (u >> 1): adjacent levels differ in one bit; 2 bits: levels -3,-1,1,3 -> 00, 01,
11, 10), packed most significant bit first (4 symbols per byte at 2 bits). A transform applies to a
stream whose tensors share bits and grid and carry no row references; `applies` says whether
it can hold the symbols. Decoding checks every byte (ArtifactError on codes no symbol makes).
Load-side code (the artifact runtime): kept small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pgolf.errors import ArtifactError
from pgolf.quant.grids import Grid

TRITS_PER_BYTE = 5
POWERS_OF_3 = np.array([1, 3, 9, 27, 81], dtype=np.int64)


@dataclass(frozen=True)
class Transform:
    """applies(flat int8, bits, grid); encode(flat, bits, grid) -> uint8; decode(uint8, n, bits, grid) -> int8 [n]; length(n, bits) -> bytes."""

    applies: Callable[[np.ndarray, int, Grid], bool]
    encode: Callable[[np.ndarray, int, Grid], np.ndarray]
    decode: Callable[[np.ndarray, int, int, Grid], np.ndarray]
    length: Callable[[int, int], int]
    description: str


def trits_length(n: int, bits: int = 2) -> int:
    return -(-n // TRITS_PER_BYTE)


def trits_applies(flat: np.ndarray, bits: int, grid: Grid) -> bool:
    return grid.offset == 0.0 and (not flat.size or -1 <= int(flat.min()) <= int(flat.max()) <= 1)


def encode_trits(flat: np.ndarray, bits: int, grid: Grid) -> np.ndarray:
    digits = np.zeros(trits_length(flat.size) * TRITS_PER_BYTE, dtype=np.int64)
    digits[: flat.size] = flat.astype(np.int64) + 1
    return (digits.reshape(-1, TRITS_PER_BYTE) @ POWERS_OF_3).astype(np.uint8)


def decode_trits(data: np.ndarray, n: int, bits: int, grid: Grid) -> np.ndarray:
    if data.size != trits_length(n):
        raise ArtifactError(f"trits: {data.size} bytes cannot hold {n} trits")
    if data.size and int(data.max()) >= 3**TRITS_PER_BYTE:
        raise ArtifactError(f"trits: byte {int(data.max())} is not 5 trits (at most {3**TRITS_PER_BYTE - 1})")
    digits = (data.astype(np.int64)[:, None] // POWERS_OF_3) % 3
    flat = digits.reshape(-1)
    if flat[n:].any():
        raise ArtifactError("trits: padding after the last trit is not zero")
    return (flat[:n] - 1).astype(np.int8)


def bits_length(n: int, bits: int) -> int:
    return -(-n * bits // 8)


def encode_bits(flat: np.ndarray, bits: int, grid: Grid) -> np.ndarray:
    u = (flat.astype(np.int64) - grid.lo(bits)).astype(np.uint8)
    gray = u ^ (u >> 1)
    return np.packbits(np.unpackbits(gray[:, None], axis=1)[:, 8 - bits :].reshape(-1))


def decode_bits(data: np.ndarray, n: int, bits: int, grid: Grid) -> np.ndarray:
    if data.size != bits_length(n, bits):
        raise ArtifactError(f"bits: {data.size} bytes cannot hold {n} {bits}-bit symbols")
    stream = np.unpackbits(data.astype(np.uint8))
    if stream[n * bits :].any():
        raise ArtifactError("bits: padding after the last symbol is not zero")
    gray = stream[: n * bits].reshape(n, bits).astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1))
    u, shift = gray.copy(), 1
    while shift < bits:
        u ^= u >> shift
        shift *= 2
    q = u + grid.lo(bits)
    if n and int(q.max()) > grid.hi(bits):
        raise ArtifactError(f"bits: code {int(u.max())} is no level of the {bits}-bit grid")
    return q.astype(np.int8)


# The one registry of symbol-stream transforms: pack.transform and the loader.
SYMBOL_TRANSFORMS: dict[str, Transform] = {
    "trits": Transform(trits_applies, encode_trits, decode_trits, trits_length, "5 trits per byte, base 3 (record #640)"),
    "bits": Transform(lambda flat, bits, grid: True, encode_bits, decode_bits, bits_length, "Gray-coded bit packing at the symbols' width (Q^2)"),
}
