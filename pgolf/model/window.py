"""Local (sliding-window) causal attention: query t reads only keys s with t - W < s <= t.

Source: openai/parameter-golf PR #5 (recursive weight sharing + local attention), which built it as
a dense -inf mask; here one predicate feeds both the dense boolean mask (CPU, SDPA) and a
FlexAttention mask_mod (CUDA, whose block mask skips the tiles outside the band).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def in_window(q_idx: Tensor, kv_idx: Tensor, window: int) -> Tensor:
    """Causal and local: kv_idx <= q_idx and q_idx - kv_idx < window (window >= 1)."""
    return (kv_idx <= q_idx) & (q_idx - kv_idx < window)


def dense_window_mask(length: int, window: int, device: torch.device | str | None = None) -> Tensor:
    """[T, T] bool: row t is true at the last `window` positions up to t (the diagonal always)."""
    if window < 1:
        raise ValueError(f"attention window must be >= 1, got {window}")
    pos = torch.arange(length, device=device)
    return in_window(pos[:, None], pos[None, :], window)


def window_mask_mod(window: int) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """`in_window` as a FlexAttention mask_mod(b, h, q_idx, kv_idx)."""
    if window < 1:
        raise ValueError(f"attention window must be >= 1, got {window}")

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return in_window(q_idx, kv_idx, window)

    return mask_mod


def receptive_field(layers: int, window: int) -> int:
    """How far back (in positions) `layers` stacked window-W attentions can reach: layers * (W - 1).
    Position t's output depends on no token before t - receptive_field."""
    return layers * (window - 1)
