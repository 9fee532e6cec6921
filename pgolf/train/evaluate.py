"""Validation loss on a fixed token subset, split across ranks, in nats per token."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pgolf.dist import DistInfo, sum_over_ranks


@torch.no_grad()
def validation_loss(
    forward: Callable[[Tensor], Tensor],
    tokens: Tensor,
    seq_len: int,
    batch_tokens: int,
    info: DistInfo,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """Mean cross-entropy of next-token prediction over non-overlapping `seq_len` windows of `tokens`."""
    num_seqs = (tokens.numel() - 1) // seq_len
    first, last = info.rank * num_seqs // info.world_size, (info.rank + 1) * num_seqs // info.world_size
    per_batch = max(1, batch_tokens // (seq_len * info.world_size))
    totals = torch.zeros(2, dtype=torch.float64, device=info.device)  # [sum of losses, token count]
    for start in range(first, last, per_batch):
        stop = min(start + per_batch, last)
        window = tokens[start * seq_len : stop * seq_len + 1].to(info.device)
        x = window[:-1].view(-1, seq_len)
        y = window[1:].view(-1, seq_len)
        with autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum")
        totals += torch.stack((loss.double(), torch.tensor(y.numel(), dtype=torch.float64, device=info.device)))
    totals = sum_over_ranks(totals, info)
    return float(totals[0] / totals[1])
