"""Causal self-attention with grouped KV heads (GQA), QK-norm, RoPE and a learned per-head q gain."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config.model import ModelParams
from pgolf.model.layers import CastedLinear, Rotary, rms_norm


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelParams, layer: int = 0) -> None:
        super().__init__()
        dim, head_dim = config.width, config.head_dim
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, head_dim
        self.eps = config.norm_eps
        self.c_q = CastedLinear(dim, config.heads * head_dim)
        self.c_k = CastedLinear(dim, config.kv_heads * head_dim)
        self.c_v = CastedLinear(dim, config.kv_heads * head_dim)
        self.proj = CastedLinear(config.heads * head_dim, dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((config.heads,), config.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(config.rope_dims or head_dim, config.rope_base)

    def forward(self, x: Tensor, segments: Tensor | None = None, value_embed: Tensor | None = None) -> Tensor:
        """x [B, T, C] -> [B, T, C]. `segments` [B, T] int64: attend only within equal ids (doc_attention);
        `value_embed` [B, T, kv_heads*head_dim]: added to the values."""
        B, T, _ = x.shape
        v = self.c_v(x)
        if value_embed is not None:
            v = v + value_embed.to(v.dtype)
        q = self.c_q(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
        k = self.c_k(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
        q, k = self.rotary(rms_norm(q, self.eps)), self.rotary(rms_norm(k, self.eps))
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        gqa = self.kv_heads != self.heads
        if segments is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = causal & (segments[:, :, None] == segments[:, None, :])  # [B, T, T]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, self.heads * self.head_dim)  # [B, T, H*Dh]
        return self.proj(y)
