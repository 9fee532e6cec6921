"""BigramHash embedding (openai/parameter-golf PR #315, `BigramHashEmbedding`): each (previous,
current) token pair is hashed into a bucket of a [buckets, dim] table (zero at init), lifted to the
model width and scaled (init 0.05), then added to the token embedding.

Hash: (36313*cur XOR 27191*prev) mod (buckets - 1), in int64. The last bucket is reserved for
positions with no previous token in their document: a row's first position and every BOS (whose
previous token belongs to the previous document).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.model.layers import CastedLinear

SCALE_INIT = 0.05


def bigram_buckets(idx: Tensor, buckets: int, bos_id: int) -> Tensor:
    """[B, T] int64 bucket of each position's (previous, current) pair."""
    if buckets < 2:
        raise ValueError(f"bigram_buckets must be >= 2 (one is reserved), got {buckets}")
    cur = idx.long()
    reserved = buckets - 1
    pairs = torch.bitwise_xor(36313 * cur[:, 1:], 27191 * cur[:, :-1]) % reserved  # [B, T-1]
    hashed = torch.cat((torch.full_like(cur[:, :1], reserved), pairs), dim=1)
    return hashed.masked_fill(cur == bos_id, reserved)


class BigramHash(nn.Module):
    def __init__(self, buckets: int, dim: int, width: int, bos_id: int) -> None:
        super().__init__()
        if buckets < 2:
            raise ValueError(f"bigram_buckets must be >= 2 (one is reserved), got {buckets}")
        self.buckets, self.bos_id = buckets, bos_id
        self.embed = nn.Embedding(buckets, dim)
        nn.init.zeros_(self.embed.weight)
        self.lift = CastedLinear(dim, width)
        self.scale = nn.Parameter(torch.tensor(SCALE_INIT))

    def forward(self, idx: Tensor) -> Tensor:
        """idx [B, T] -> [B, T, width]."""
        h = self.lift(self.embed(bigram_buckets(idx, self.buckets, self.bos_id)))
        return h * self.scale.to(h.dtype)
