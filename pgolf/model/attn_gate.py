"""Sparse attention-output gate: each head's output scaled by sigmoid(scale * w_h . x[:k]) of the
attention input's first k dims. Source: openai/parameter-golf PR #1787 (modded-nanogpt style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def init_gate_weight(heads: int, window: int) -> Tensor:
    """W [heads, window] = 0, as the record (SPARSE_ATTN_GATE_INIT_STD 0): every head's gate starts at
    sigmoid(0) = 1/2, halving each head's output, whatever the input."""
    return torch.zeros(heads, window, dtype=torch.float32)


def gate_heads(y: Tensor, x: Tensor, weight: Tensor, scale: float) -> Tensor:
    """y [B, T, H, D] head outputs, x [B, T, C] attention input, weight [H, k]
    -> y[..., h, :] * sigmoid(scale * weight[h] . x[..., :k])."""
    g = torch.sigmoid(scale * F.linear(x[..., : weight.size(1)], weight.to(x.dtype)))  # [B, T, H]
    return y * g.unsqueeze(-1).to(y.dtype)
