"""SmearGate on the token embeddings (openai/parameter-golf PR #1667; BOS mask, PR #1851):
x_t += lam * sigmoid(w . x_t[:k]) * x_{t-1}, with lam = 0 and w = 0 at init (the identity), and
never at a BOS: a document's first token takes nothing from the previous document."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SmearGate(nn.Module):
    def __init__(self, window: int, bos_id: int) -> None:
        super().__init__()
        self.window, self.bos_id = window, bos_id
        self.w = nn.Parameter(torch.zeros(window))
        self.lam = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        """x [B, T, C] embeddings of tokens idx [B, T] -> smeared x; position 0 is unchanged."""
        gate = self.lam.to(x.dtype) * torch.sigmoid(x[:, 1:, : self.window] @ self.w.to(x.dtype))  # [B, T-1]
        gate = gate.masked_fill(idx[:, 1:] == self.bos_id, 0.0)
        return torch.cat((x[:, :1], x[:, 1:] + gate.unsqueeze(-1) * x[:, :-1]), dim=1)
