"""The double-gated short convolution that replaces attention in the listed layers (the Q^2 proposal's
conv/attention hybrid, after LFM2: Liquid AI, 2025):

    (B, C, h) = in_proj(x),    z = C * conv_K(B * h),    out = out_proj(z)

conv_K is a causal depthwise convolution over time: out_t = sum_{j<K} w[:, K-1-j] * y_{t-j}, zero
before the row's start and, with document segments, zero for positions of an earlier document (it
never crosses a BOS). in_proj and out_proj are CastedLinear (GPTQ hooks and TTT LoRA see them);
out_proj starts at zero like attention's projection; the kernel is a plain [width, 1, K] tensor
(nn.Conv1d's depthwise shape and init, uniform +-1/sqrt(K)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.model.layers import CastedLinear


def causal_depthwise_conv(y: Tensor, kernel: Tensor, segments: Tensor | None = None) -> Tensor:
    """y [B, T, C], kernel [C, 1, K] -> [B, T, C]: out_t = sum_j kernel[:, 0, K-1-j] * y_{t-j} over
    0 <= j < K with t - j >= 0 and, given `segments` [B, T], segments[t - j] == segments[t]."""
    B, T, C = y.shape
    K = kernel.size(-1)
    w = kernel.reshape(C, K).to(y.dtype)
    out = y * w[:, K - 1]
    for j in range(1, min(K, T)):
        earlier = F.pad(y[:, : T - j], (0, 0, j, 0))  # y_{t-j}, zero for t < j
        if segments is not None:
            same = segments == F.pad(segments[:, : T - j], (j, 0), value=-1)  # [B, T]; ids are >= 0
            earlier = earlier * same.unsqueeze(-1).to(y.dtype)
        out = out + earlier * w[:, K - 1 - j]
    return out


class ShortConv(nn.Module):
    def __init__(self, width: int, kernel_size: int) -> None:
        super().__init__()
        self.in_proj = CastedLinear(width, 3 * width)
        bound = 1.0 / math.sqrt(kernel_size)
        self.kernel = nn.Parameter(torch.empty(width, 1, kernel_size).uniform_(-bound, bound))
        self.out_proj = CastedLinear(width, width, zero_init=True)

    def forward(self, x: Tensor, segments: Tensor | None = None) -> Tensor:
        """x [B, T, C] -> [B, T, C]; `segments` [B, T] document ids (None: the row is one document)."""
        b, c, h = self.in_proj(x).chunk(3, dim=-1)
        return self.out_proj(c * causal_depthwise_conv(b * h, self.kernel, segments))
