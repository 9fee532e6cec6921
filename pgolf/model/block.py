"""One transformer block: residual mix with the embedding, pre-norm attention and MLP with
learned per-channel output scales; optionally the two-lane (parallel residual) form. In the
`conv_layers` the attention sublayer is a short convolution (pgolf.model.shortconv); `layer` is
the physical block index (pgolf.model.sharing)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.config.model import ModelParams
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.lanes import LaneMix, Lanes
from pgolf.model.layers import RMSNorm
from pgolf.model.linears import LinearFactory
from pgolf.model.lnscale import ln_scale
from pgolf.model.mlp import MLP
from pgolf.model.docmask import DocumentMask, mask_segments
from pgolf.model.shortconv import ShortConv


class Block(nn.Module):
    def __init__(self, config: ModelParams, layer: int = 0, linear: LinearFactory | None = None) -> None:
        super().__init__()
        dim = config.width
        self.layer = layer
        self.attn_norm = RMSNorm(config.norm_eps)
        self.mlp_norm = RMSNorm(config.norm_eps)
        # The token mixer: attention, or in a conv layer the short convolution (and no attention).
        self.conv = ShortConv(dim, config.conv_kernel) if layer in config.conv_layers else None
        self.attn = None if self.conv is not None else CausalSelfAttention(config, layer, linear)
        self.mlp = MLP(config, layer, linear)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        # resid_mix[0] weighs the running stream x, resid_mix[1] the embedding x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim)))) if config.resid_mix else None
        self.norm_scale = ln_scale(layer) if config.ln_scale else None
        parallel = config.parallel_from is not None and layer >= config.parallel_from
        self.lane_mix = LaneMix() if parallel else None

    def mixed(self, x: Tensor, x0: Tensor) -> Tensor:
        if self.resid_mix is None:
            return x
        mix = self.resid_mix.to(x.dtype)
        return mix[0] * x + mix[1] * x0  # [B, T, C]

    def normed(self, norm: RMSNorm, x: Tensor) -> Tensor:
        """A sublayer's input: norm(x), times 1/sqrt(layer + 1) with ln_scale."""
        y = norm(x)
        return y if self.norm_scale is None else y * self.norm_scale

    @property
    def mixer(self) -> nn.Module:
        """The sublayer that reads other positions: attention, or the short convolution in a conv layer."""
        return self.conv if self.conv is not None else self.attn

    def mix_tokens(self, x: Tensor, segments: Tensor | DocumentMask | None, value_embed: Tensor | None) -> Tensor:
        """The sublayer that reads other positions: attention, or the convolution (within documents)."""
        if self.conv is not None:
            return self.conv(x, mask_segments(segments))
        return self.attn(x, segments, value_embed)

    def forward(self, x: Tensor, x0: Tensor, segments: Tensor | DocumentMask | None = None, value_embed: Tensor | None = None) -> Tensor:
        x = self.mixed(x, x0)
        x = x + self.attn_scale.to(x.dtype) * self.mix_tokens(self.normed(self.attn_norm, x), segments, value_embed)
        x = x + self.mlp_scale.to(x.dtype) * self.mlp(self.normed(self.mlp_norm, x))
        return x

    def forward_lanes(self, lanes: Lanes, x0: Tensor, segments: Tensor | DocumentMask | None = None, value_embed: Tensor | None = None) -> Lanes:
        """The parallel form: attention reads the attention lane (mixed with x0), the MLP the MLP lane."""
        if self.lane_mix is None:
            raise ValueError(f"block {self.layer} has no lanes (parallel_from is off or above it)")
        attn_lane, mlp_lane = lanes
        attn_out = self.attn_scale.to(attn_lane.dtype) * self.mix_tokens(self.normed(self.attn_norm, self.mixed(attn_lane, x0)), segments, value_embed)
        mlp_out = self.mlp_scale.to(mlp_lane.dtype) * self.mlp(self.normed(self.mlp_norm, mlp_lane))
        return self.lane_mix(lanes, attn_out, mlp_out)
