"""Recursive weight sharing (openai/parameter-golf PR #5): P physical blocks run as the `layers`
logical layers, logical layer i applying block i mod P, cycling through the U-Net halves (the
encoder/decoder split and the skips follow the logical order, as with depth recurrence).

A physical block is built once, so every per-layer option built into a block follows its physical
index b < P: ln_scale's 1/sqrt(b + 1), XSA on the last xsa_layers of the P blocks, value_embed_layers,
conv_layers and parallel_from. Without sharing, physical and logical indices coincide (P = layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pgolf.config.model import ModelParams


def physical_blocks(config: ModelParams) -> int:
    """P: the blocks stored (shared_blocks, or one per layer when sharing is off)."""
    return config.shared_blocks or config.layers


def shared_order(layers: int, blocks: int) -> list[int]:
    """The physical block of each of `layers` logical layers: i mod `blocks` (blocks >= 1)."""
    if not 1 <= blocks <= layers:
        raise ValueError(f"shared blocks ({blocks}) must be between 1 and layers ({layers})")
    return [i % blocks for i in range(layers)]


def sharing_error(config: ModelParams) -> str | None:
    """Why the per-layer options cannot index the physical blocks of `config` (one line), or None."""
    blocks = physical_blocks(config)
    if config.xsa_layers > blocks:
        return f"xsa_layers ({config.xsa_layers}) must be <= shared_blocks ({blocks}): per-layer options index the physical blocks"
    for name in ("value_embed_layers", "conv_layers"):
        bad = [i for i in getattr(config, name) if i >= blocks]
        if bad:
            return f"{name} {bad} must be < shared_blocks ({blocks}): per-layer options index the physical blocks"
    overlap = sorted(set(config.value_embed_layers) & set(config.conv_layers))
    if overlap:
        return f"value_embed_layers and conv_layers share layers {overlap}: a convolution layer has no attention values"
    return None


@dataclass(frozen=True)
class Depth:
    """What a configuration stores against what it computes."""

    stored_params: int  # every parameter of the model
    block_params: int  # those of the P stored blocks
    physical_blocks: int  # P
    effective_layers: int  # block applications per forward (logical layers, recurrence loops included)
    applied_block_params: int  # block parameters summed over the applications: the compute a token sees


def stored_vs_effective(config: ModelParams) -> Depth:
    """Count `config`'s model (built on the meta device: no memory, no random draws)."""
    from pgolf.model.gpt import GPT  # the model imports this module

    with torch.device("meta"):
        model = GPT(config)
    sizes = [sum(p.numel() for p in block.parameters()) for block in model.blocks]
    encoder, decoder = model.orders[True]
    order = encoder + decoder
    return Depth(
        stored_params=sum(p.numel() for p in model.parameters()),
        block_params=sum(sizes),
        physical_blocks=len(model.blocks),
        effective_layers=len(order),
        applied_block_params=sum(sizes[b] for b in order),
    )
