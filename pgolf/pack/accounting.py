"""Whole-model byte accounting: the order-0 entropy bound of a quantized model and where an
artifact's bytes go.

The bound (pgolf's definition): every tensor group's integer symbols at the order-0 entropy of
that group's symbol histogram, plus every float tensor (scales, extras, passthrough) at its stored
bytes. It is what one fitted distribution per group and uncompressed side tensors would cost with
no container at all; an artifact below it has found structure beyond order 0 (per-column
statistics, compressible scales) that pays for the container.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgolf.pack.entropy import order0_entropy_bits
from pgolf.quant.apply import QuantizedModel


@dataclass(frozen=True)
class EntropyBound:
    symbol_bytes: float  # sum over groups of the order-0 entropy of the group's symbols
    side_bytes: int  # stored bytes of every float tensor (scales, extras, passthrough)

    @property
    def total_bytes(self) -> float:
        return self.symbol_bytes + self.side_bytes


def group_symbols(qm: QuantizedModel) -> dict[str, np.ndarray]:
    """Each tensor group's symbols, concatenated in model order."""
    parts: dict[str, list[np.ndarray]] = {}
    for qt in qm.quantized.values():
        parts.setdefault(qt.group, []).append(qt.q.numpy().ravel())
    return {group: np.concatenate(arrays) for group, arrays in parts.items()}


def side_tensor_bytes(qm: QuantizedModel) -> int:
    total = sum(qt.scale.numel() * 2 + sum(t.numel() * t.element_size() for t in qt.extras.values()) for qt in qm.quantized.values())
    return total + sum(t.numel() * t.element_size() for t in qm.passthrough.values())


def entropy_bound(qm: QuantizedModel) -> EntropyBound:
    """The whole model's order-0 entropy bound (see the module docstring)."""
    bits = sum(order0_entropy_bits(symbols) for symbols in group_symbols(qm).values())
    return EntropyBound(bits / 8, side_tensor_bytes(qm))
