"""Params section `train.model`: every architectural choice of the GPT.

Its own module so that the model (`pgolf.model`) depends on its configuration alone, never on the
training section or anything training imports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pgolf.config.base import Section


class ModelParams(Section):
    """`train.model`: every architectural choice of the GPT (official baseline shape in descriptions)."""

    vocab_size: int | None = Field(None, ge=2, le=65536, description="vocabulary size; null = take it from the shards' manifest.json")
    layers: int = Field(4, ge=1, le=64, description="transformer blocks (official: 9)")
    width: int = Field(128, ge=8, le=8192, description="residual stream width (official: 512)")
    heads: int = Field(4, ge=1, le=128, description="query heads (official: 8)")
    kv_heads: int = Field(2, ge=1, le=128, description="key/value heads, GQA; must divide heads (official: 4)")
    mlp_mult: float = Field(2.0, gt=0, le=16, description="MLP hidden width = mlp_mult * width (official: 2)")
    activation: Literal["relu2", "leaky_relu2"] = Field("relu2", description="MLP activation: relu(x)^2, or leaky_relu(x, slope)^2 (frontier)")
    leaky_slope: float = Field(0.5, ge=0.0, le=1.0, description="negative slope of leaky_relu2 (frontier: 0.5)")
    rope_base: float = Field(10000.0, gt=1.0, description="RoPE frequency base (official: 10000)")
    rope_dims: int | None = Field(None, ge=2, description="rotated dims per head, even; null = the whole head (frontier: 16 of 64)")
    qk_gain_init: float = Field(1.5, gt=0.0, le=100.0, description="initial per-head gain on normalized queries (official: 1.5)")
    logit_softcap: float | None = Field(30.0, gt=0.0, description="logits = c*tanh(z/c); null = no cap (official: 30)")
    tied_embeddings: bool = Field(True, description="output head shares the token embedding matrix (official: true)")
    tied_embed_init_std: float = Field(0.005, gt=0.0, le=1.0, description="init std of the tied embedding (official: 0.005)")
    skips: bool = Field(True, description="U-Net skips: second-half blocks add weighted outputs of first-half blocks (official: true)")
    resid_mix: bool = Field(True, description="each block mixes its input with the normalized embedding x0 by learned weights (official: true)")
    norm_eps: float | None = Field(None, gt=0.0, le=1.0, description="RMSNorm epsilon; null = torch's default for the dtype")

    @model_validator(mode="after")
    def _shape(self) -> ModelParams:
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})")
        head_dim = self.width // self.heads
        if head_dim % 2:
            raise ValueError(f"head dim width/heads = {head_dim} must be even for RoPE")
        if self.rope_dims is not None and (self.rope_dims % 2 or self.rope_dims > head_dim):
            raise ValueError(f"rope_dims ({self.rope_dims}) must be even and <= the head dim ({head_dim})")
        return self

    @property
    def head_dim(self) -> int:
        return self.width // self.heads
