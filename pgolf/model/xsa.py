"""XSA, exclusive self-attention: each head's output loses its component along the position's own
value. Source: arXiv:2603.09078 (Zhai, 2026); openai/parameter-golf PR #287 (last layers), PR #478 (all).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def uses_xsa(layer: int, layers: int, xsa_layers: int) -> bool:
    """Whether block `layer` of `layers` is among the last `xsa_layers` (0 = none)."""
    return layer >= layers - xsa_layers


def exclude_self_value(y: Tensor, v: Tensor) -> Tensor:
    """y [B, H, T, D] head outputs, v [B, Hkv, T, D] values, H a multiple of Hkv (query head h reads
    kv head h // (H/Hkv), as in GQA) -> y - (y . v_hat) v_hat per head and position, v_hat = v / |v|."""
    B, H, T, D = y.shape
    kv_heads = v.size(1)
    y_g = y.reshape(B, kv_heads, H // kv_heads, T, D)  # the query heads of each kv group
    v_hat = F.normalize(v, dim=-1).to(y.dtype).unsqueeze(2)  # [B, Hkv, 1, T, D]
    return (y_g - (y_g * v_hat).sum(dim=-1, keepdim=True) * v_hat).reshape(B, H, T, D)
