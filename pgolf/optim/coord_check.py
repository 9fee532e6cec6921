"""The muP coordinate check (Tensor Programs V, arXiv:2203.03466, section 4 / Fig. 5; PR #4): train
the same model at several widths for a few steps and compare the RMS of each layer's output. Under
muP each layer's RMS is the same at every width; a parametrization that does not transfer shows
layers whose RMS grows (or shrinks) with the width."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pgolf.config.model import ModelParams
from pgolf.config.train import OptimParams
from pgolf.model.gpt import GPT
from pgolf.optim.groups import build_optimizers, set_schedule

Batch = tuple[Tensor, Tensor]  # (idx [B, T], targets [B, T])


def rms(x: Tensor) -> float:
    return x.detach().float().pow(2).mean().sqrt().item()


@torch.no_grad()
def activation_rms(model: GPT, idx: Tensor) -> dict[str, float]:
    """RMS of every block's attention output, MLP output and block output, and of the logits, on
    `idx`; names "block{i}.attn", "block{i}.mlp", "block{i}", "logits" (a block run twice: its last run)."""
    found: dict[str, float] = {}

    def record(name: str) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            found[name] = rms(output)

        return hook

    handles = []
    for i, block in enumerate(model.blocks):
        for name, module in ((f"block{i}.attn", block.attn), (f"block{i}.mlp", block.mlp), (f"block{i}", block)):
            handles.append(module.register_forward_hook(record(name)))
    try:
        found["logits"] = rms(model(idx))
    finally:
        for handle in handles:
            handle.remove()
    return found


def train_steps(model: GPT, optim: OptimParams, batches: Sequence[Batch], momentum: float) -> None:
    """One optimizer step per batch at the base learning rates (no schedule)."""
    optimizers = build_optimizers(model, optim)
    set_schedule(optimizers, 1.0, momentum)
    for idx, targets in batches:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        model.loss(idx, targets).backward()
        for opt in optimizers:
            opt.step()


def coord_check(
    config_at: Callable[[int], ModelParams], widths: Sequence[int], optim: OptimParams, batches: Sequence[Batch], seed: int = 0
) -> dict[int, dict[str, float]]:
    """Width -> activation_rms after training a fresh model (seeded) of config_at(width) on `batches`
    (the first batch is also the one measured)."""
    table: dict[int, dict[str, float]] = {}
    for width in widths:
        torch.manual_seed(seed)
        model = GPT(config_at(width))
        train_steps(model, optim, batches, optim.matrix.momentum)
        table[width] = activation_rms(model, batches[0][0])
    return table


def width_exponents(table: dict[int, dict[str, float]]) -> dict[str, float]:
    """Per layer, the exponent a of RMS ~ width^a from the narrowest to the widest width: 0 is flat
    (muP's promise), 1 grows in proportion to the width, -0.5 shrinks as 1/sqrt(width)."""
    narrow, wide = min(table), max(table)
    if narrow == wide:
        raise ValueError("width_exponents needs at least two widths")
    span = math.log(wide / narrow)
    return {name: math.log(table[wide][name] / table[narrow][name]) / span for name in table[narrow]}
