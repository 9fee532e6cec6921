"""The GPT: embedding, blocks with U-Net skips between the halves, final norm, tied head, softcap.

`GPT(config)` takes the validated `train.model` section with `vocab_size` resolved (not null);
`build_model(dict)` rebuilds one from the JSON dict stored in checkpoints and artifacts.

Record-stack options (each off by default; off, the model is the baseline bit for bit): BigramHash
and SmearGate on the embedding, value embeddings, depth recurrence (the blocks run in a logical
order that repeats a span; the U-Net halves and skips follow that order), skip gates, LN scale,
parallel lanes, document attention and the asymmetric softcap. Their modules are named after them.
Issue 15: recursive weight sharing (P blocks cycled over the layers: pgolf.model.sharing), local
attention (pgolf.model.window) and short-convolution layers (pgolf.model.shortconv).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config.base import validate_section
from pgolf.config.model import ModelParams
from pgolf.errors import ParamsError
from pgolf.model.bigram import BigramHash
from pgolf.model.block import Block
from pgolf.model.docmask import DocumentMask, MaskRule, attention_mask, document_segments
from pgolf.model.lanes import Lanes, final_lane, lane_start
from pgolf.model.linears import BLOCK_LINEARS, LinearFactory
from pgolf.model import mup
from pgolf.model.layers import CastedLinear, RMSNorm, rms_norm
from pgolf.model.recurrence import logical_layers, unet_halves
from pgolf.model.sharing import physical_blocks, shared_order, sharing_error
from pgolf.model.skips import merge_skip
from pgolf.model.smear import SmearGate
from pgolf.model.softcap import AsymmetricSoftcap, softcap
from pgolf.model.value_embed import ValueEmbedding


class GPT(nn.Module):
    def __init__(self, config: ModelParams) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ParamsError("train.model.vocab_size: must be resolved (from the shards' manifest) before building the model")
        problem = sharing_error(config)
        if problem:
            raise ParamsError(f"train.model.{problem}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.width)
        # The module all block matrices share (a hypernetwork), or None (dense: the baseline).
        self.linear_shared = BLOCK_LINEARS[config.block_linear].shared(config)
        linear = LinearFactory(config, self.linear_shared)
        self.blocks = nn.ModuleList(Block(config, layer, linear) for layer in range(physical_blocks(config)))
        # (encoder, decoder) block orders with depth recurrence on (True) and off (False); with
        # shared blocks both are the cycled order (the config refuses sharing with recurrence).
        plain = shared_order(config.layers, physical_blocks(config))
        looped = logical_layers(config.layers, config.recur_start, config.recur_end, config.recur_loops) if config.recur_loops else plain
        self.orders = {True: unet_halves(looped), False: unet_halves(plain)}
        self.recurrence_active = True
        try:
            self.lane_starts = {active: lane_start(*order, config.parallel_from) for active, order in self.orders.items()}
        except ValueError as exc:
            raise ParamsError(f"train.model.{exc}") from None
        encoder, decoder = self.orders[True]
        num_skips = min(len(encoder), len(decoder)) if config.skips else 0  # sized for the looped order
        self.skip_weights = nn.Parameter(torch.ones(num_skips, config.width)) if num_skips else None
        self.skip_gates = nn.Parameter(torch.zeros(num_skips, config.width)) if num_skips and config.skip_gates else None
        self.final_norm = RMSNorm(config.norm_eps)
        self.lm_head = None if config.tied_embeddings else CastedLinear(config.width, config.vocab_size, zero_init=True)
        if config.tied_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=config.tied_embed_init_std)
        # Built after the baseline's modules, so that they draw the baseline's initial weights.
        self.bigram = BigramHash(config.bigram_buckets, config.bigram_dim, config.width, config.bos_id) if config.bigram_buckets else None
        self.smear_gate = SmearGate(config.smear_window, config.bos_id) if config.smear_gate else None
        value_width = config.kv_heads * config.head_dim
        layers = config.value_embed_layers
        self.value_embed = ValueEmbedding(config.vocab_size, config.value_embed_dim, value_width, layers) if layers else None
        self.softcap = AsymmetricSoftcap(config.logit_softcap) if config.asymmetric_softcap and config.logit_softcap is not None else None
        if config.mup_base_width is not None:
            mup.init_weights(self)

    def set_recurrence(self, active: bool) -> None:
        """Depth recurrence on (the looped order; a fresh model's state) or off (each block once)."""
        self.recurrence_active = bool(active)

    def head_weight(self) -> Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def embed(self, idx: Tensor) -> Tensor:
        """x0: the normalized token embedding (+ BigramHash, then SmearGate)."""
        x = self.tok_emb(idx)  # [B, T, C]
        if self.bigram is not None:
            x = x + self.bigram(idx)
        if self.smear_gate is not None:
            x = self.smear_gate(x, idx)
        return rms_norm(x, self.config.norm_eps)

    def forward(self, idx: Tensor, segments: Tensor | None = None) -> Tensor:
        """idx [B, T] int64 -> logits [B, T, V] float32 (softcapped). `segments` [B, T]: document ids
        for attention (computed from BOS positions when doc_attention is on and none are given)."""
        if segments is None and self.config.doc_attention:
            segments = document_segments(idx, self.config.bos_id)
        mask = self.attention_mask(segments, idx)  # built once, shared by every layer
        x = self.embed(idx)
        x0 = x
        shared_ve = None if self.value_embed is None else self.value_embed(idx)
        encoder, decoder = self.orders[self.recurrence_active]
        skips: list[Tensor] = []
        for layer in encoder:
            x = self.blocks[layer](x, x0, mask, self.value_embed_for(shared_ve, layer))
            skips.append(x)
        start = self.lane_starts[self.recurrence_active]
        lanes: Lanes | None = None
        for i, layer in enumerate(decoder):
            if i == start:
                lanes = (x, x)
            if self.skip_weights is not None and skips:
                gate = None if self.skip_gates is None else self.skip_gates[i]
                if lanes is None:
                    x = merge_skip(x, skips.pop(), self.skip_weights[i], gate)
                else:
                    lanes = (merge_skip(lanes[0], skips.pop(), self.skip_weights[i], gate), lanes[1])
            value_embed = self.value_embed_for(shared_ve, layer)
            if lanes is None:
                x = self.blocks[layer](x, x0, mask, value_embed)
            else:
                lanes = self.blocks[layer].forward_lanes(lanes, x0, mask, value_embed)
        if lanes is not None:
            x = final_lane(lanes, self.config.parallel_final)
        x = self.final_norm(x)
        logits = F.linear(x, self.head_weight().to(x.dtype)).float()  # [B, T, V]
        if self.config.mup_base_width is not None:
            logits = logits * mup.logit_multiplier(self.config)
        return self.cap(logits)

    def attention_mask(self, segments: Tensor | None, idx: Tensor) -> DocumentMask | None:
        """The documents' and the window's mask for `idx` [B, T]; None for plain causal attention."""
        window = self.config.attention_window
        if segments is None and not window:
            return None
        return attention_mask(MaskRule(idx.size(1), idx.device, segments, window))

    def value_embed_for(self, shared: Tensor | None, layer: int) -> Tensor | None:
        return None if shared is None or self.value_embed is None else self.value_embed.for_layer(shared, layer)

    def cap(self, logits: Tensor) -> Tensor:
        if self.softcap is not None:
            return self.softcap(logits)
        c = self.config.logit_softcap
        return logits if c is None else softcap(logits, c)

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy in nats; targets [B, T]."""
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_config_dict(model: GPT) -> dict[str, Any]:
    """The JSON dict that `build_model` turns back into the same architecture."""
    return model.config.model_dump(mode="json")


def build_model(model_config: dict[str, Any]) -> GPT:
    """A freshly initialized GPT from a `train.model` dict (vocab_size filled in)."""
    config = validate_section(ModelParams, model_config, "model_config")
    return GPT(config)
