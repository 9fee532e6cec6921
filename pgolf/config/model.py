"""Params section `train.model`: every architectural choice of the GPT.

Its own module so that the model (`pgolf.model`) depends on its configuration alone, never on the
training section or anything training imports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pgolf.config.base import Section, known_name


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
    bos_id: int = Field(1, ge=0, description="token id that starts every document (official: 1); doc_attention and smear_gate stop at it")
    # Record-stack options (CHALLENGE.md, PR #2135 lineage). Each defaults off; the baseline is unchanged.
    xsa_layers: int = Field(0, ge=0, le=64, description="XSA on the last N layers: remove each head's output component along its normalized value (records: all 11)")
    recur_start: int = Field(0, ge=0, description="first layer of the depth-recurrence span [recur_start, recur_end] (records: 3)")
    recur_end: int = Field(0, ge=0, description="last layer of the span (records: 5)")
    recur_loops: int = Field(0, ge=0, le=8, description="extra applications of the span with shared weights; 0 = off (records: 2)")
    recur_from_progress: float = Field(0.0, ge=0.0, le=1.0, description="fraction of training after which recurrence is on (records: 0.35); evaluation always uses it")
    parallel_from: int | None = Field(None, ge=1, description="two parallel residual lanes (attention, MLP) with learned mixing from this layer on; null = off (records: 8)")
    parallel_final: Literal["mean", "attn", "mlp"] = Field("mean", description="which lane (or their mean) feeds the final norm (records: mean)")
    skip_gates: bool = Field(False, description="U-Net skips as a sigmoid-gated lerp instead of a weighted add (records: on)")
    ln_scale: bool = Field(False, description="block input norms scaled by 1/sqrt(layer + 1) (records: on)")
    smear_gate: bool = Field(False, description="SmearGate on the token embeddings: x_t += lambda*sigmoid(w.x_t[:k])*x_{t-1}, always masked at BOS (records: on)")
    smear_window: int = Field(12, ge=1, description="k: leading embedding dims feeding the smear gate (records: 12)")
    attn_out_gate: bool = Field(False, description="sparse attention-output gate: per head sigmoid(scale * W x[:k]) on its output (records: on)")
    attn_gate_window: int = Field(12, ge=1, description="k: leading input dims feeding the attention-output gate (records: 12)")
    attn_gate_scale: float = Field(1.0, gt=0.0, description="scale inside the attention-output gate's sigmoid (records: 1.0)")
    asymmetric_softcap: bool = Field(False, description="learned positive and negative logit caps, both initialized to logit_softcap (records: on, 30/30)")
    bigram_buckets: int = Field(0, ge=0, le=1 << 20, description="BigramHash embedding: hashed (previous, current) token pairs into this many buckets; 0 = off")
    bigram_dim: int = Field(128, ge=1, le=8192, description="width of the BigramHash table (projected to the model width)")
    value_embed_layers: list[int] = Field(default_factory=list, description="layers whose attention values get a learned value embedding of the token added; [] = off")
    value_embed_dim: int = Field(128, ge=1, le=8192, description="width of the shared value-embedding table (projected to each layer's value width)")
    doc_attention: bool = Field(False, description="attention never crosses a BOS: each document attends only to itself (CPU: a mask; CUDA: FlexAttention)")
    # Issue 15: five published proposals, each off by default (docs/ablations.md measures them).
    shared_blocks: int = Field(0, ge=0, le=64, description="recursive weight sharing (PR #5): P physical blocks run as the `layers` logical layers, logical layer i using block i mod P; per-layer options (ln_scale, xsa_layers, value_embed_layers, conv_layers, parallel_from) index the P physical blocks; 0 = off")
    attention_window: int = Field(0, ge=0, description="local attention (PR #5): a query reads only the last W positions, itself included; composes with doc_attention (CPU: a boolean SDPA mask; CUDA: a FlexAttention block mask); 0 = off (full causal)")
    block_linear: str = Field("dense", description="a name of pgolf.model.linears.BLOCK_LINEARS, the kind of every attention and MLP matrix: dense | hyper (hypernetwork-generated factors, PR #16) | ternary (BitNet b1.58 quantization-aware training, record #640)")
    hyper_rank: int = Field(8, ge=1, le=64, description="block_linear=hyper: rank of W = r c^T / sqrt(in * rank) (proposal: <= 16)")
    hyper_embed_dim: int = Field(32, ge=1, le=4096, description="block_linear=hyper: width of the layer and matrix-type embeddings")
    hyper_hidden: int = Field(64, ge=1, le=8192, description="block_linear=hyper: hidden width of the factor MLPs")
    ternary_group: int = Field(128, ge=1, le=65536, description="block_linear=ternary: input columns sharing one absmean scale (record #640: 128)")
    mup_base_width: int | None = Field(None, ge=8, le=8192, description="muP (PR #4): the width whose learning rates transfer; logits times base/width, head init and Muon update scale follow it; null = off")
    conv_layers: list[int] = Field(default_factory=list, description="block indices (< shared_blocks when sharing) whose attention is a double-gated short causal depthwise convolution (Q^2 proposal, after LFM2: 10 of 16 layers); attention-only options (XSA, output gate, value embeddings, window) do not apply there; [] = off")
    conv_kernel: int = Field(3, ge=1, le=64, description="kernel of the short convolution (LFM2: 3)")

    @field_validator("block_linear")
    @classmethod
    def _registered(cls, value: str) -> str:
        from pgolf.model.linears import BLOCK_LINEARS

        return known_name(value, BLOCK_LINEARS)

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
        if self.vocab_size is not None and self.bos_id >= self.vocab_size:
            raise ValueError(f"bos_id ({self.bos_id}) must be < vocab_size ({self.vocab_size})")
        if self.xsa_layers > self.layers:
            raise ValueError(f"xsa_layers ({self.xsa_layers}) must be <= layers ({self.layers})")
        if self.recur_loops and not (self.recur_start <= self.recur_end < self.layers):
            raise ValueError(f"recurrence span [{self.recur_start}, {self.recur_end}] must satisfy start <= end < layers ({self.layers})")
        if self.parallel_from is not None and self.parallel_from >= self.layers:
            raise ValueError(f"parallel_from ({self.parallel_from}) must be < layers ({self.layers})")
        if self.asymmetric_softcap and self.logit_softcap is None:
            raise ValueError("asymmetric_softcap needs logit_softcap (its initial value)")
        for name, window in (("smear_window", self.smear_window), ("attn_gate_window", self.attn_gate_window)):
            if window > self.width:
                raise ValueError(f"{name} ({window}) must be <= width ({self.width})")
        if self.bigram_buckets == 1:
            raise ValueError("bigram_buckets must be 0 (off) or >= 2 (one bucket is reserved for BOS and row starts)")
        bad = [i for i in self.value_embed_layers if not 0 <= i < self.layers]
        if bad or len(set(self.value_embed_layers)) != len(self.value_embed_layers):
            raise ValueError(f"value_embed_layers {self.value_embed_layers} must be distinct layer indices < layers ({self.layers})")
        if self.shared_blocks > self.layers:
            raise ValueError(f"shared_blocks ({self.shared_blocks}) must be <= layers ({self.layers})")
        if self.shared_blocks and self.recur_loops:
            raise ValueError("shared_blocks and recur_loops are two kinds of weight sharing; use one")
        if self.mup_base_width is not None and self.block_linear == "hyper":
            raise ValueError("mup_base_width does not apply to block_linear=hyper (its matrices are generated, not initialized)")
        bad = [i for i in self.conv_layers if not 0 <= i < self.layers]
        if bad or len(set(self.conv_layers)) != len(self.conv_layers):
            raise ValueError(f"conv_layers {self.conv_layers} must be distinct layer indices < layers ({self.layers})")
        from pgolf.model.sharing import sharing_error

        if (error := sharing_error(self)) is not None:
            raise ValueError(error)
        return self

    @property
    def head_dim(self) -> int:
        return self.width // self.heads
