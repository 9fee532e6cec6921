"""GPTQ (Frantar et al. 2022, arXiv:2210.17323; reference code IST-DASLab/gptq).

Columns are quantized one at a time; the rounding error of each is spread over the columns not yet
quantized through the inverse Hessian ``H^-1`` of the layer's inputs, so the layer *output*
``X W^T`` changes as little as possible. Options: act-order (columns in decreasing ``diag(H)``),
damping (a fraction of mean ``diag(H)`` added to the diagonal), and lazy batch updates (the
error is applied to the rest of the matrix once per block of `block_size` columns).
The per-row scale is fixed before the sweep, so the result is an integer matrix plus that scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pgolf.quant.rtn import Levels, quantize, quantize_levels

MAX_DAMP_RETRIES = 6


def act_order_permutation(h: torch.Tensor) -> torch.Tensor:
    """Column order for act-order: decreasing diag(H), ties kept in index order."""
    return torch.argsort(torch.diagonal(h), descending=True, stable=True)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``x[:, perm][:, inv] == x``."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return inv


def damped_factor(h: torch.Tensor, damp_frac: float, factor: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
    """`factor(H + damp*I)` (float64), damp = damp_frac * mean diag(H), the damping raised tenfold
    (a few times) while `factor` returns None (H, or what it derives from H, not positive definite)."""
    h = h.double()
    mean_diag = torch.diagonal(h).mean().clamp(min=1e-12)
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    frac = damp_frac
    for _ in range(MAX_DAMP_RETRIES):
        out = factor(h + frac * mean_diag * eye)
        if out is not None:
            return out
        frac = max(frac * 10.0, 1e-6)
    raise ValueError(f"Hessian is not positive definite even with damping {frac:g} x mean diag")


def damped_cholesky(h: torch.Tensor, damp_frac: float) -> torch.Tensor:
    """Lower L with L L^T = H + damp * I (float64); see `damped_factor`."""
    return damped_factor(h, damp_frac, _cholesky)


def upper_cholesky_of_inverse(h: torch.Tensor, damp_frac: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp*I)^-1`` (float32); see `damped_factor`."""
    return damped_factor(h, damp_frac, _upper_cholesky_of_inverse).float()


def _cholesky(m: torch.Tensor) -> torch.Tensor | None:
    lower, info = torch.linalg.cholesky_ex(m)
    return lower if int(info) == 0 else None


def _upper_cholesky_of_inverse(m: torch.Tensor) -> torch.Tensor | None:
    lower = _cholesky(m)
    if lower is None:
        return None
    upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    return upper if int(info) == 0 else None


def gptq(
    w: torch.Tensor,
    h: torch.Tensor,
    scale: torch.Tensor,
    maxq: int,
    block_size: int = 128,
    damp_frac: float = 0.01,
    act_order: bool = True,
    mult: torch.Tensor | None = None,
    levels: Levels | None = None,
) -> torch.Tensor:
    """Quantize ``w`` [rows, cols] against input second moments ``h`` [cols, cols].

    `scale` is the per-row scale [rows, 1]. Returns int8 [rows, cols] in the original column
    order, with ``|q| <= maxq``. With ``h`` a multiple of the identity this equals round-to-nearest.
    With `mult` (int [cols]), column j is rounded in the same solve on a grid mult[j] times finer
    (symbols in units of scale / mult[j], ``|q| <= maxq * mult[j]``): mixed precision, AWQ-lite.
    With `levels` (another integer grid, `pgolf.quant.grids`), columns are rounded on that grid and
    `scale` may be [rows, cols] (per-group scales expanded), each column with its own.
    """
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(h.shape)} does not match {cols} input columns")
    w = w.float().clone()
    h = h.float().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = act_order_permutation(h) if act_order else torch.arange(cols)
    w = w[:, perm]
    h = h[perm][:, perm]
    h_inv = upper_cholesky_of_inverse(h, damp_frac)
    mults = [1] * cols if mult is None else mult[perm].tolist()
    per_column = scale.shape[-1] == cols and cols > 1
    if per_column:
        scale = scale[:, perm]
    q = torch.zeros_like(w)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w_blk = w[:, i1:i2].clone()
        err_blk = torch.zeros_like(w_blk)
        h_inv_blk = h_inv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w_blk[:, i : i + 1]  # [rows, 1]
            base = scale[:, i1 + i : i1 + i + 1] if per_column else scale
            if levels is not None:
                step = base
                q_col = quantize_levels(col, step, levels)
                q[:, i1 + i : i1 + i + 1] = q_col
                err = (col - (q_col + levels.offset) * step) / h_inv_blk[i, i]
            else:
                m = mults[i1 + i]
                step = base if m == 1 else base / m
                q_col = quantize(col, step, maxq * m)
                q[:, i1 + i : i1 + i + 1] = q_col
                err = (col - q_col * step) / h_inv_blk[i, i]
            w_blk[:, i:] -= err @ h_inv_blk[i : i + 1, i:]
            err_blk[:, i : i + 1] = err
        w[:, i2:] -= err_blk @ h_inv[i1:i2, i2:]  # lazy batch update of the remaining columns
    return q[:, inverse_permutation(perm)].to(torch.int8)


def relative_output_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """``||X (W - W_hat)^T||^2 / ||X W^T||^2`` over the calibration inputs, computed from H = X^T X."""
    e = (w.double() - w_hat.double())
    h = h.double()
    num = torch.einsum("ij,jk,ik->", e, h, e)
    den = torch.einsum("ij,jk,ik->", w.double(), h, w.double())
    return float(num / den) if float(den) > 0 else 0.0


def relative_reconstruction_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """``||W - W_hat||_F^2 / ||W||_F^2``."""
    den = float((w.double() ** 2).sum())
    return float(((w.double() - w_hat.double()) ** 2).sum()) / den if den > 0 else 0.0
