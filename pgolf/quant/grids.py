"""Integer grids of the quantized symbols: which integers a `bits`-bit symbol may take and the value
each stands for, W_hat = (q + offset) * scale. Load-side code (the artifact runtime): kept small.

`symmetric` (the default, today's grid): q in [-qmax, qmax], qmax = 2**(bits-1) - 1, value q * s:
an odd number of levels with 0 among them (2 bits: {-1, 0, 1}, which also holds ternary trits).
`midrise` (the Q^2 proposal's structural grid, issue 15 item 5): all 2**bits codes used, q in
[-2**(bits-1), 2**(bits-1) - 1], value (q + 1/2) * s: no zero level (2 bits: {-3, -1, 1, 3} * s/2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grid:
    """`offset`: value = (q + offset) * scale; `full`: all 2**bits codes are levels (else 2**bits - 1)."""

    offset: float
    full: bool
    description: str

    def lo(self, bits: int) -> int:
        return -(2 ** (bits - 1)) if self.full else -(2 ** (bits - 1) - 1)

    def hi(self, bits: int) -> int:
        return 2 ** (bits - 1) - 1

    def span(self, bits: int) -> float:
        """Largest |value| / scale: the grid reaches +-span(bits) * scale."""
        return self.hi(bits) + self.offset


GRIDS: dict[str, Grid] = {
    "symmetric": Grid(0.0, False, "q * s, q in [-(2^(b-1)-1), 2^(b-1)-1] (zero is a level)"),
    "midrise": Grid(0.5, True, "(q + 1/2) * s, q in [-2^(b-1), 2^(b-1)-1] (Q^2: 2 bits = {-3,-1,1,3} s/2)"),
}
