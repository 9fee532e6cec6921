"""AWQ-lite (parameter-golf PR #1908): choose each matrix's most salient column blocks and keep
them at higher precision inside the same GPTQ solve; the stored form is `pgolf.quant.salient`.

Saliency of input column j is ``H_jj * mean_i W_ij^2``, the energy column j carries into the
layer's output (H = sum x x^T over the calibration inputs); blocks are aligned runs of `width`
columns, ranked by their summed saliency. PR #1908 scores ``rms(x_j) * mean_i |W_ij|`` and keeps
one 64-column block at int8 beside int6.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgolf.quant import salient


def column_saliency(w: Tensor, h: Tensor) -> Tensor:
    """H_jj * mean_i W_ij^2 per input column, float64 [cols]."""
    return torch.diagonal(h).double().clamp(min=0) * w.double().pow(2).mean(dim=0)


def choose_blocks(saliency: Tensor, width: int, top: int) -> Tensor:
    """First columns (ascending, int64) of the `top` aligned blocks of `width` columns with the
    largest summed saliency; empty when the matrix has fewer than `width` columns."""
    blocks = saliency.numel() // width
    if blocks == 0:
        return torch.zeros(0, dtype=torch.long)
    sums = saliency[: blocks * width].reshape(blocks, width).sum(dim=1)
    best = torch.argsort(sums, descending=True, stable=True)[: min(top, blocks)]
    return torch.sort(best).values * width


def multipliers(cols: int, starts: Tensor, width: int, shift: int) -> Tensor:
    """int64 [cols]: 2**shift at the blocks' columns, 1 elsewhere (the quantizers' `mult`)."""
    mult = torch.ones(cols, dtype=torch.long)
    mult[salient.columns(starts, width)] = 2**shift
    return mult


def split(q_fine: Tensor, starts: Tensor, width: int, shift: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Symbols on the mixed grid -> (coarse int8 symbols, the `salient` extras).

    At the blocks' columns q = floor((q_fine + m/2) / m) and fine = q_fine - m q, m = 2**shift,
    so that q * m + fine == q_fine with fine in [-m/2, m/2 - 1] and |q| <= maxq."""
    cols = salient.columns(starts, width)
    m = 2**shift
    fine_grid = q_fine[:, cols].long()
    coarse = torch.div(fine_grid + m // 2, m, rounding_mode="floor")
    q = q_fine.clone()
    q[:, cols] = coarse.to(torch.int8)
    extras = {
        f"{salient.NAME}.fine": (fine_grid - coarse * m).to(torch.float16),
        f"{salient.NAME}.start": starts.to(torch.float32),
        f"{salient.NAME}.shift": torch.tensor([float(shift)]),
    }
    return q, extras
