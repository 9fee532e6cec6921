"""Value embeddings (openai/parameter-golf PR #374 stack, `ValueEmbedding`, e.g. record
2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233): one shared token table [vocab, dim]
(init std 0.01) lifted to the value width kv_heads*head_dim and scaled (init 0.1); each listed layer
multiplies it by its own learned scale (init 1) and its attention adds the result to v.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.model.layers import CastedLinear

TABLE_INIT_STD = 0.01
SCALE_INIT = 0.1


class ValueEmbedding(nn.Module):
    def __init__(self, vocab: int, dim: int, value_width: int, layers: list[int]) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        nn.init.normal_(self.embed.weight, mean=0.0, std=TABLE_INIT_STD)
        self.lift = CastedLinear(dim, value_width)
        self.scale = nn.Parameter(torch.tensor(SCALE_INIT))
        self.layer_scales = nn.Parameter(torch.ones(len(layers)))
        self.slot = {layer: i for i, layer in enumerate(layers)}

    def forward(self, idx: Tensor) -> Tensor:
        """The shared value embedding of tokens idx [B, T] -> [B, T, value_width]."""
        h = self.lift(self.embed(idx))
        return h * self.scale.to(h.dtype)

    def for_layer(self, shared: Tensor, layer: int) -> Tensor | None:
        """What block `layer` adds to its values (None for an unlisted layer)."""
        slot = self.slot.get(layer)
        return None if slot is None else shared * self.layer_scales[slot].to(shared.dtype)
