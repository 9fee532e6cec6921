"""Low-rank correction of a quantized matrix: W_hat = Q * s + U V^T, with U V^T the best rank-r
approximation (truncated SVD) of the quantization residual W - Q * s, stored in float16.

Idea: error-compensating low-rank adapters on quantized weights (LQER, Zhang et al. 2024,
arXiv:2402.02446; ZeroQuant-V2's LoRC, Yao et al. 2023, arXiv:2303.08302). Off by default
(`quantize.lowrank_rank: 0`); each tensor then costs (rows + cols) * rank * 2 bytes more before
compression.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

NAME = "lowrank"
PARTS = ("u", "v")


def fit_lowrank(residual: Tensor, rank: int) -> dict[str, Tensor]:
    """{"lowrank.u": U*S [rows, r], "lowrank.v": V^T [r, cols]} (float16), r = min(rank, rows, cols)."""
    r = min(rank, *residual.shape)
    u, s, vh = torch.linalg.svd(residual.double(), full_matrices=False)
    return {f"{NAME}.u": (u[:, :r] * s[:r]).to(torch.float16), f"{NAME}.v": vh[:r].to(torch.float16)}


def correction(parts: Mapping[str, Tensor], rows: int, cols: int) -> Tensor:
    """U V^T in float32, [rows, cols]."""
    return parts["u"].float() @ parts["v"].float()
