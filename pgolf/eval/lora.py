"""Per-lane LoRA for test-time training: one low-rank update per document lane, with its own Adam.

`LaneLoRA` wraps a frozen linear map (an nn.Linear, or a generated HyperLinear): y = W x + (alpha/rank) * B_l A_l x, where l is the lane of
the batch row (`select` sets the lane of each row). Every lane starts from the same random A and
B = 0, so a fresh lane leaves the model's output unchanged bit for bit. `LaneAdam` keeps Adam
moments and step counts per lane, so resetting a lane (a new document) forgets everything the
lane learned, and a document's result does not depend on which lane it ran in.

Warm start (`reset(lanes, keep_a=True)`, #1767 in the records): a new document zeroes only B and
keeps the A its lane learned, so a document's result depends on the earlier documents of its lane
(and on its lane). That is legal: a lane takes a document only after its earlier documents were
scored, so the dependence runs forward in evaluation order, and lanes still never share anything.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn

from pgolf.errors import ParamsError
from pgolf.model.hyperlinear import HyperLinear

LINEAR_MAPS = (nn.Linear, HyperLinear)  # what LoRA adapts: x -> W x with in_features and out_features


class LaneLoRA(nn.Module):
    def __init__(self, base: nn.Module, lanes: int, rank: int, alpha: float, generator: torch.Generator, device: torch.device | None = None) -> None:
        super().__init__()
        self.base = base
        bound = 1.0 / math.sqrt(base.in_features)
        a = ((torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound).expand(lanes, -1, -1).clone()
        device = device if device is not None else base.weight.device
        self.a = nn.Parameter(a.to(device))  # [L, r, in]
        self.b = nn.Parameter(torch.zeros(lanes, base.out_features, rank, device=device))  # [L, out, r]
        self.register_buffer("a_init", self.a.detach().clone(), persistent=False)
        self.scale = alpha / rank
        self.rows = torch.zeros(1, dtype=torch.long, device=device)

    def select(self, rows: Tensor) -> None:
        """Lane of each batch row of the next forward passes."""
        self.rows = rows

    def reset(self, lanes: Tensor, keep_a: bool = False) -> None:
        """B = 0 on these lanes (the lane is the frozen map again); A back to its start unless keep_a (warm start)."""
        with torch.no_grad():
            if not keep_a:
                self.a[lanes] = self.a_init[lanes]
            self.b[lanes] = 0.0

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.a[self.rows].to(x.dtype), self.b[self.rows].to(x.dtype)  # [B, r, in], [B, out, r]
        delta = torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))  # [B, T, out]
        return self.base(x) + self.scale * delta


def attach_lora(model: nn.Module, pattern: str, lanes: int, rank: int, alpha: float, seed: int) -> list[LaneLoRA]:
    """Freeze `model` and replace each linear map (LINEAR_MAPS) whose name matches `pattern` (re.search) by a LaneLoRA."""
    for p in model.parameters():
        p.requires_grad_(False)
    regex = re.compile(pattern)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, LINEAR_MAPS) and regex.search(name)]
    if not targets:
        raise ParamsError(f"eval_ttt.lora_targets: {pattern!r} matches no linear module of the model")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    adapters = []
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        adapter = LaneLoRA(module, lanes, rank, alpha, generator, device)
        setattr(parent, child, adapter)
        adapters.append(adapter)
    return adapters


class LaneAdam:
    """Adam on [lanes, ...] parameters; only the given lanes step, and lanes reset independently."""

    def __init__(self, params: list[nn.Parameter], lr: float, betas: tuple[float, float], eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = torch.zeros(params[0].shape[0], device=params[0].device)

    def reset(self, lanes: Tensor) -> None:
        self.t[lanes] = 0.0
        for m, v in zip(self.m, self.v):
            m[lanes] = 0.0
            v[lanes] = 0.0

    @torch.no_grad()
    def step(self, lanes: Tensor) -> None:
        b1, b2 = self.betas
        self.t[lanes] += 1.0
        t = self.t[lanes]
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad[lanes]
            m[lanes] = b1 * m[lanes] + (1 - b1) * g
            v[lanes] = b2 * v[lanes] + (1 - b2) * g * g
            shape = (-1,) + (1,) * (p.dim() - 1)
            m_hat = m[lanes] / (1 - b1**t).view(shape)
            v_hat = v[lanes] / (1 - b2**t).view(shape)
            p[lanes] -= self.lr * m_hat / (v_hat.sqrt() + self.eps)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
