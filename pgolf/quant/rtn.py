"""Symmetric per-row integer quantization: the pure primitives and round-to-nearest (RTN).

A weight row ``w`` with scale ``s`` maps to integers ``q = clamp(round(w / s), -qmax, qmax)`` with
``qmax = 2**(bits-1) - 1``: ``2*qmax + 1`` symbols centred on zero; ``q * s`` reconstructs it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

MIN_BITS = 2
MAX_BITS = 8
FP16_TINY = 2.0**-24  # smallest positive float16 (subnormal): scales are stored as float16, never 0


def qmax_for_bits(bits: int) -> int:
    """Largest magnitude of a signed symmetric `bits`-bit integer: 2**(bits-1) - 1."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must lie in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return 2 ** (bits - 1) - 1


class Levels(NamedTuple):
    """A non-default integer grid (`pgolf.quant.grids`): symbols in [lo, hi], value (q + offset) * scale."""

    lo: int
    hi: int
    offset: float


def levels_for(grid: str, bits: int) -> Levels:
    from pgolf.quant.grids import GRIDS

    g = GRIDS[grid]
    return Levels(g.lo(bits), g.hi(bits), g.offset)


def quantize_levels(x: torch.Tensor, scale: torch.Tensor, levels: Levels) -> torch.Tensor:
    """The symbols (as floats) whose grid values are nearest to `x`. Pure."""
    return torch.clamp(torch.round(x / scale - levels.offset), levels.lo, levels.hi)


def quantize(x: torch.Tensor, scale: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integers (as floats) nearest to ``x / scale``, clamped to [-maxq, maxq]. Pure."""
    return torch.clamp(torch.round(x / scale), -maxq, maxq)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in float32; `scale` broadcasts over the rows of `q` ([rows, 1])."""
    return q.float() * scale.float()


def as_fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to the float16 values the artifact stores (and keep them positive)."""
    return scale.float().clamp(min=FP16_TINY, max=65504.0).half().float()


def std_scale(w: torch.Tensor, k: float, maxq: int) -> torch.Tensor:
    """Per-row scale ``k * std(row) / qmax`` as a [rows, 1] column (float16-representable).

    The records' SDClip (parameter-golf PR #1394): std with Bessel's correction (torch's default,
    as the records compute it), so a k here means what it means there."""
    std = w.float().std(dim=1, correction=1, keepdim=True)
    return as_fp16_scale(k * std / maxq)


def clip_search_scale(
    w: torch.Tensor,
    maxq: int,
    weights: torch.Tensor | None = None,
    candidates: int = 32,
    min_ratio: float = 0.3,
    levels: Levels | None = None,
) -> torch.Tensor:
    """Per-row scale ``r * max|row| / qmax`` with r in [min_ratio, 1] minimising the row's
    squared rounding error, each column weighted by `weights` (e.g. diag(H); default uniform).
    With `levels` (another grid), rounding is on that grid and qmax is its reach, hi + offset."""
    w = w.float()
    col_w = torch.ones(w.shape[1]) if weights is None else weights.float().clamp(min=0)
    absmax = w.abs().amax(dim=1, keepdim=True)
    best_scale = as_fp16_scale(absmax / maxq)
    best_err = torch.full((w.shape[0], 1), float("inf"))
    for ratio in torch.linspace(min_ratio, 1.0, candidates).tolist():
        scale = as_fp16_scale(ratio * absmax / maxq)
        w_hat = dequantize(quantize(w, scale, maxq), scale) if levels is None else (quantize_levels(w, scale, levels) + levels.offset) * scale
        err = ((w - w_hat) ** 2 * col_w).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
    return best_scale


def fine_grid(scale: torch.Tensor, maxq: int, mult: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(step [rows, cols], limit [cols]) of a grid `mult` [cols] times finer per column (same range)."""
    return scale / mult.float(), (maxq * mult).float()


def rtn(w: torch.Tensor, scale: torch.Tensor, maxq: int, mult: torch.Tensor | None = None, levels: Levels | None = None) -> torch.Tensor:
    """Round-to-nearest: the baseline every other method is compared with. int8 [rows, cols].

    With `mult` (int [cols], see `pgolf.quant.salient_fit`), column j is rounded on a grid
    mult[j] times finer: symbols in units of scale / mult[j], up to maxq * mult[j]. With `levels`,
    rounding is on that grid (`scale` may then be [rows, cols], per-group scales expanded)."""
    if levels is not None:
        return quantize_levels(w.float(), scale, levels).to(torch.int8)
    if mult is None:
        return quantize(w.float(), scale, maxq).to(torch.int8)
    step, limit = fine_grid(scale, maxq, mult)
    return torch.clamp(torch.round(w.float() / step), -limit, limit).to(torch.int8)
