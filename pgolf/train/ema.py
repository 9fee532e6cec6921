"""Exponential moving average of the weights (frontier records: decay ~0.997), kept in float32."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in self.shadow:
            self.shadow[name].copy_(tensors[name])
