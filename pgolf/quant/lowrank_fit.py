"""Fitting the low-rank correction (quantize side; the stored form is `pgolf.quant.lowrank`).

LQER (Zhang et al. 2024, arXiv:2402.02446) as the records use it (parameter-golf PR #1797: rank 4
on the 3 tensors with the largest residual norm, 4-bit factors): a rank-r factorisation
U V^T of the residual E = W - W_hat. The fit minimises ||E - U V^T||_F, or, with a Hessian H
(metric "output"), the output error tr((E - U V^T) H (E - U V^T)^T): the SVD of E L with
H = L L^T (damped), mapped back through L^-1. Integer factors: U (per component, in runs of
`group` entries) is rounded first, then V is refitted to the rounded U by least squares (the
same optimum under either metric) and rounded.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from pgolf.quant.gptq import damped_cholesky
from pgolf.quant.lowrank import NAME, dequantize_factor, group_index
from pgolf.quant.rtn import as_fp16_scale, qmax_for_bits, quantize


def top_by_residual(norms: Mapping[str, float], top: int) -> set[str]:
    """Names of the `top` largest residual norms (ties in name order); every name when top is 0."""
    ranked = sorted(norms, key=lambda name: (-norms[name], name))
    return set(ranked if top == 0 else ranked[:top])


def truncated_factors(e: Tensor, rank: int, h: Tensor | None = None, damp_frac: float = 0.01) -> tuple[Tensor, Tensor]:
    """(A [rows, r], B [r, cols]) float64, A B the best rank-r approximation of `e` in the
    Frobenius norm, or in the H-weighted one when `h` is given."""
    if h is None:
        u, s, vh = torch.linalg.svd(e.double(), full_matrices=False)
        return u[:, :rank] * s[:rank], vh[:rank]
    lower = damped_cholesky(h, damp_frac)
    u, s, vh = torch.linalg.svd(e.double() @ lower, full_matrices=False)
    b = torch.linalg.solve_triangular(lower.T, vh[:rank].T, upper=True).T  # vh_r L^-1
    return u[:, :rank] * s[:rank], b


def quantize_factor(x: Tensor, bits: int, group: int) -> tuple[Tensor, Tensor]:
    """x [r, n] -> (integer symbols [r, n], float16 scales [r, ceil(n / group)]): symmetric,
    scale = max |x| / qmax over each run of a component."""
    r, n = x.shape
    groups = -(-n // group)
    index = group_index(n, groups)
    amax = torch.zeros(r, groups, dtype=x.dtype).scatter_reduce(1, index.expand(r, n), x.abs(), "amax")
    maxq = qmax_for_bits(bits)
    scale = as_fp16_scale(amax / maxq)
    return quantize(x.float(), scale[:, index], maxq), scale.half()


def fit_lowrank(residual: Tensor, rank: int, h: Tensor | None = None, damp_frac: float = 0.01,
                u_bits: int = 0, v_bits: int = 0, group: int = 32) -> dict[str, Tensor]:
    """The `lowrank` extras of a residual [rows, cols]: rank r = min(rank, rows, cols); factors of
    0 bits are float16 values, others integer symbols with scales (see the module docstring)."""
    r = min(rank, *residual.shape)
    e = residual.double()
    a, b = truncated_factors(e, r, h, damp_frac)
    parts: dict[str, Tensor] = {}
    if u_bits:
        symbols, scale = quantize_factor(a.T, u_bits, group)
        parts |= {f"{NAME}.u": symbols.T.half(), f"{NAME}.u_scale": scale}
        b = torch.linalg.pinv(dequantize_factor(symbols, scale).T.double()) @ e
    else:
        parts[f"{NAME}.u"] = a.to(torch.float16)
    if v_bits:
        symbols, scale = quantize_factor(b, v_bits, group)
        parts |= {f"{NAME}.v": symbols.half(), f"{NAME}.v_scale": scale}
    else:
        parts[f"{NAME}.v"] = b.to(torch.float16)
    return parts
