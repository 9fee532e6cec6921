"""Tensor groups: which params section entry (bits, k) quantizes which weight, decided by name.

The table is data: the first pattern that matches a weight's qualified name picks its group;
2-D tensors that match none are `other`. Names follow the module tree of `pgolf.model`.
"""

from __future__ import annotations

import re

import torch

GROUPS = ("attention", "mlp", "embedding", "other")
GROUP_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("embedding", re.compile(r"(^|\.)(wte|tok_emb|tok_embeddings|embed|embedding|embeddings|lm_head)(\.|$)")),
    # The short convolution of train.model.conv_layers replaces attention in its blocks: quantized like it.
    ("attention", re.compile(r"(^|\.)(attn|attention|self_attn|conv)(\.|$)")),
    ("mlp", re.compile(r"(^|\.)(mlp|ffn|feed_forward)(\.|$)")),
)


def tensor_group(name: str) -> str:
    """The group of weight `name`: attention, mlp, embedding or other."""
    for group, pattern in GROUP_PATTERNS:
        if pattern.search(name):
            return group
    return "other"


def is_quantizable(tensor: torch.Tensor, min_numel: int) -> bool:
    """Floating 2-D matrices with at least `min_numel` elements are quantized; the rest pass through."""
    return tensor.ndim == 2 and tensor.is_floating_point() and tensor.numel() >= max(min_numel, 1)


def unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split tied weights: (canonical name -> tensor, alias name -> canonical name).

    Tensors sharing storage, offset, shape and strides are one tensor; the first name in
    `state` order is canonical (e.g. the embedding, tied with the output head)."""
    canonical: dict[tuple, str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in canonical:
            aliases[name] = canonical[key]
            continue
        canonical[key] = name
        unique[name] = tensor
    return unique, aliases
