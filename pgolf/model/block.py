"""One transformer block: residual mix with the embedding, pre-norm attention and MLP with
learned per-channel output scales."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.config.model import ModelParams
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.layers import RMSNorm
from pgolf.model.mlp import MLP


class Block(nn.Module):
    def __init__(self, config: ModelParams) -> None:
        super().__init__()
        dim = config.width
        self.attn_norm = RMSNorm(config.norm_eps)
        self.mlp_norm = RMSNorm(config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        # resid_mix[0] weighs the running stream x, resid_mix[1] the embedding x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim)))) if config.resid_mix else None

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        if self.resid_mix is not None:
            mix = self.resid_mix.to(x.dtype)
            x = mix[0] * x + mix[1] * x0  # [B, T, C]
        x = x + self.attn_scale.to(x.dtype) * self.attn(self.attn_norm(x))
        x = x + self.mlp_scale.to(x.dtype) * self.mlp(self.mlp_norm(x))
        return x
