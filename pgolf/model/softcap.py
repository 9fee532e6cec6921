"""Logit softcaps: c*tanh(z/c) (baseline), and learned caps for positive and negative logits, both
initialized to c (asymmetric softcap, openai/parameter-golf PR #1923), equal to the plain cap at init."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def softcap(logits: Tensor, cap: float) -> Tensor:
    return cap * torch.tanh(logits / cap)


class AsymmetricSoftcap(nn.Module):
    def __init__(self, cap: float) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.tensor(float(cap)))
        self.neg = nn.Parameter(torch.tensor(float(cap)))

    def forward(self, logits: Tensor) -> Tensor:
        """pos*tanh(z/pos) where z >= 0, neg*tanh(z/neg) where z < 0."""
        pos, neg = self.pos.to(logits.dtype), self.neg.to(logits.dtype)
        return torch.where(logits >= 0, pos * torch.tanh(logits / pos), neg * torch.tanh(logits / neg))
