"""Small building blocks: weightless RMSNorm, a Linear that computes in the input's dtype, RoPE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rms_norm(x: Tensor, eps: float | None = None) -> Tensor:
    """x / rms(x) over the last dim, no learned weight."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


class RMSNorm(nn.Module):
    """Weightless RMSNorm (the baseline has no norm gains)."""

    def __init__(self, eps: float | None = None) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.eps)


class CastedLinear(nn.Linear):
    """nn.Linear whose fp32 weight is cast to the input's dtype at matmul time (bf16 autocast-free).

    A plain nn.Linear subclass, so forward hooks on nn.Linear (GPTQ calibration) see every matrix.
    """

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def rope_frequencies(rotated_dims: int, base: float) -> Tensor:
    """Inverse frequencies base^(-2i/d) for i < d/2, float32."""
    return 1.0 / (base ** (torch.arange(0, rotated_dims, 2, dtype=torch.float32) / rotated_dims))


def rope_tables(seq_len: int, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin tables of shape [T, d/2] for positions 0..T-1."""
    angles = torch.outer(torch.arange(seq_len, device=inv_freq.device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first 2*cos.size(-1) dims of x [B, H, T, D] in (first half, second half) pairs.

    Dims beyond the rotated ones pass through unchanged (partial RoPE).
    """
    rotated = 2 * cos.size(-1)
    half = rotated // 2
    x1, x2, rest = x[..., :half], x[..., half:rotated], x[..., rotated:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    y1 = x1 * cos + x2 * sin
    y2 = x2 * cos - x1 * sin
    return torch.cat((y1, y2, rest), dim=-1)


class Rotary(nn.Module):
    """RoPE on the first `rotated_dims` dims of each head. The tables are cached for the longest
    length seen on the device and sliced: a position's angle does not depend on the length, and
    a cache that changed with every width would invalidate compiled graphs each time widths
    alternate (evaluation's padded buckets, the length schedule)."""

    def __init__(self, rotated_dims: int, base: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_frequencies(rotated_dims, base), persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def tables(self, seq_len: int) -> tuple[Tensor, Tensor]:
        device = self.inv_freq.device
        if self._cache is None or self._cache[0] < seq_len or self._cache[1] != device:
            cos, sin = rope_tables(seq_len, self.inv_freq)
            self._cache = (seq_len, device, cos, sin)
        return self._cache[2][:seq_len], self._cache[3][:seq_len]

    def forward(self, x: Tensor) -> Tensor:
        cos, sin = self.tables(x.size(-2))
        return apply_rope(x, cos, sin)
