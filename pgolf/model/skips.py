"""U-Net skips into the decoder: a weighted add (baseline), or a sigmoid-gated lerp (skip gates,
openai/parameter-golf PR #1089) whose gate logits start at 0, i.e. the mean of stream and skip."""

from __future__ import annotations

import torch
from torch import Tensor


def merge_skip(x: Tensor, skip: Tensor, weight: Tensor, gate: Tensor | None = None) -> Tensor:
    """x + w*skip, or with a gate logit g: lerp(w*skip, x, sigmoid(g)) = x + (1 - sigmoid(g)) (w*skip - x)
    (g = 0: (x + w*skip) / 2). weight and gate are per channel [C]; x and skip [B, T, C]."""
    scaled = weight.to(x.dtype) * skip
    if gate is None:
        return x + scaled
    return torch.lerp(scaled, x, torch.sigmoid(gate.to(x.dtype)))
