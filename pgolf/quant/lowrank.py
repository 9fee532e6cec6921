"""Low-rank correction of a quantized matrix (load side): W_hat = Q * s + U V^T.

Idea: error-compensating low-rank terms on quantized weights (LQER, Zhang et al. 2024,
arXiv:2402.02446; ZeroQuant-V2's LoRC, Yao et al. 2023, arXiv:2303.08302; the records' rank-4
correction of the 3 worst tensors, parameter-golf PR #1797). Parts: ``u`` [rows, r] and ``v``
[r, cols], float16 values; or, with the optional ``u_scale`` / ``v_scale`` [r, groups], a factor
holds integer symbols and each of its r components is split along its length into `groups`
near-equal runs (entry j of n belongs to run ``j * groups // n``), one float16 scale per run.
Fitted by `pgolf.quant.lowrank_fit`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

NAME = "lowrank"
PARTS = ("u", "v")
OPTIONAL = ("u_scale", "v_scale")
MAX_SYMBOL = 127


def group_index(n: int, groups: int) -> Tensor:
    """The run of each of n entries when they are split into `groups` near-equal runs."""
    return torch.arange(n) * groups // n


def dequantize_factor(symbols: Tensor, scale: Tensor) -> Tensor:
    """Symbols [r, n] times their run's scale (scale [r, groups]), float32."""
    return symbols.float() * scale.float()[:, group_index(symbols.shape[1], scale.shape[1])]


def factors(parts: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(U [rows, r], V [r, cols]) in float32, integer factors scaled."""
    u, v = parts["u"].float(), parts["v"].float()
    if "u_scale" in parts:
        u = dequantize_factor(u.T, parts["u_scale"]).T
    if "v_scale" in parts:
        v = dequantize_factor(v, parts["v_scale"])
    return u, v


def correction(parts: Mapping[str, Tensor], scale: Tensor, cols: int) -> Tensor:
    """U V^T in float32, [rows, cols]."""
    u, v = factors(parts)
    return u @ v


def validate(parts: Mapping[str, Tensor], rows: int, cols: int) -> None:
    u, v = parts["u"], parts["v"]
    if u.ndim != 2 or v.ndim != 2 or u.shape[0] != rows or v.shape[1] != cols or u.shape[1] != v.shape[0]:
        raise ValueError(f"u {tuple(u.shape)} and v {tuple(v.shape)} do not factor a {rows}x{cols} matrix")
    for name, symbols in (("u", u.T), ("v", v)):
        scale = parts.get(f"{name}_scale")
        if scale is None:
            continue
        if scale.ndim != 2 or scale.shape[0] != symbols.shape[0] or not 1 <= scale.shape[1] <= max(symbols.shape[1], 1):
            raise ValueError(f"{name}_scale shape {tuple(scale.shape)} does not fit {name} {tuple(parts[name].shape)}")
        if not bool((symbols == symbols.round()).all()) or (symbols.numel() and float(symbols.abs().max()) > MAX_SYMBOL):
            raise ValueError(f"{name} with a scale must hold integers within +-{MAX_SYMBOL}")
