"""Causal self-attention with grouped KV heads (GQA), QK-norm, RoPE and a learned per-head q gain;
options: value embeddings added to v, document attention, a local window, XSA, a sparse per-head output gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config.model import ModelParams
from pgolf.model.attn_gate import gate_heads, init_gate_weight
from pgolf.model.docmask import DocumentMask, MaskRule, attention_mask, document_mask
from pgolf.model.layers import Rotary, rms_norm
from pgolf.model.linears import LinearFactory, LinearSpec, default_factory
from pgolf.model.sharing import physical_blocks
from pgolf.model.xsa import exclude_self_value, uses_xsa


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelParams, layer: int = 0, linear: LinearFactory | None = None) -> None:
        super().__init__()
        dim, head_dim = config.width, config.head_dim
        linear = linear or default_factory(config)
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, head_dim
        self.eps = config.norm_eps
        self.c_q = linear(LinearSpec(layer, "attn.q", dim, config.heads * head_dim))
        self.c_k = linear(LinearSpec(layer, "attn.k", dim, config.kv_heads * head_dim))
        self.c_v = linear(LinearSpec(layer, "attn.v", dim, config.kv_heads * head_dim))
        self.proj = linear(LinearSpec(layer, "attn.proj", config.heads * head_dim, dim, zero_init=True))
        self.q_gain = nn.Parameter(torch.full((config.heads,), config.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(config.rope_dims or head_dim, config.rope_base)
        self.xsa = uses_xsa(layer, physical_blocks(config), config.xsa_layers)
        self.window = config.attention_window
        # A plain Parameter (not a Linear: GPTQ hooks and TTT LoRA leave it alone); "gate" routes it to scalar Adam.
        self.out_gate_weight = nn.Parameter(init_gate_weight(config.heads, config.attn_gate_window)) if config.attn_out_gate else None
        self.gate_scale = config.attn_gate_scale

    def forward(self, x: Tensor, segments: Tensor | DocumentMask | None = None, value_embed: Tensor | None = None) -> Tensor:
        """x [B, T, C] -> [B, T, C]. `segments` [B, T] int64: attend only within equal ids (or the mask
        built once per forward, which also holds the window); `value_embed` [B, T, kv_heads*head_dim]: added to v."""
        B, T, _ = x.shape
        if isinstance(segments, Tensor) and segments.shape != (B, T):
            raise ValueError(f"segments must be [B, T] = {[B, T]}, got {list(segments.shape)}")
        q = self.c_q(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
        k = self.c_k(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
        v = self.c_v(x)
        if value_embed is not None:
            v = v + value_embed.to(v.dtype)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
        q, k = self.rotary(rms_norm(q, self.eps)), self.rotary(rms_norm(k, self.eps))
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        if segments is None and not self.window:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        else:
            y = self.mask_of(segments, T, x.device).attend(q, k, v)  # [B, H, T, Dh]
        if self.xsa:
            y = exclude_self_value(y, v)
        y = y.transpose(1, 2)  # [B, T, H, Dh]
        if self.out_gate_weight is not None:
            y = gate_heads(y, x, self.out_gate_weight, self.gate_scale)
        return self.proj(y.reshape(B, T, self.heads * self.head_dim))

    def mask_of(self, segments: Tensor | DocumentMask | None, length: int, device: torch.device) -> DocumentMask:
        """A prebuilt mask as given; else the one of `segments` and this layer's window."""
        if segments is None:
            return attention_mask(MaskRule(length, device, None, self.window))
        return document_mask(segments, self.window) if isinstance(segments, Tensor) else segments
