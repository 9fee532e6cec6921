"""The GPT: embedding, blocks with U-Net skips between the halves, final norm, tied head, softcap.

`GPT(config)` takes the validated `train.model` section with `vocab_size` resolved (not null);
`build_model(dict)` rebuilds one from the JSON dict stored in checkpoints and artifacts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config.base import validate_section
from pgolf.config.model import ModelParams
from pgolf.errors import ParamsError
from pgolf.model.block import Block
from pgolf.model.layers import CastedLinear, RMSNorm, rms_norm


class GPT(nn.Module):
    def __init__(self, config: ModelParams) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ParamsError("train.model.vocab_size: must be resolved (from the shards' manifest) before building the model")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.num_encoder = config.layers // 2
        self.num_decoder = config.layers - self.num_encoder
        num_skips = min(self.num_encoder, self.num_decoder) if config.skips else 0
        self.skip_weights = nn.Parameter(torch.ones(num_skips, config.width)) if num_skips else None
        self.final_norm = RMSNorm(config.norm_eps)
        self.lm_head = None if config.tied_embeddings else CastedLinear(config.width, config.vocab_size, zero_init=True)
        if config.tied_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=config.tied_embed_init_std)

    def head_weight(self) -> Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, idx: Tensor) -> Tensor:
        """idx [B, T] int64 -> logits [B, T, V] float32 (softcapped)."""
        x = rms_norm(self.tok_emb(idx), self.config.norm_eps)  # [B, T, C]
        x0 = x
        skips: list[Tensor] = []
        for block in self.blocks[: self.num_encoder]:
            x = block(x, x0)
            skips.append(x)
        for i, block in enumerate(self.blocks[self.num_encoder :]):
            if self.skip_weights is not None and skips:
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = block(x, x0)
        x = self.final_norm(x)
        logits = F.linear(x, self.head_weight().to(x.dtype)).float()  # [B, T, V]
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

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
