"""Document segments of a token batch, and the attention masks built from them, so that attention
and smearing never cross a BOS.

Source: the records' document-packed training (varlen attention with cu_seqlens at every BOS,
documents longer than the training sequence split into pieces; openai/parameter-golf PR #1530
lineage). Here a segment is an integer id per position; two positions may interact only when
their ids are equal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


def document_segments(idx: Tensor, bos_id: int, max_tokens: int | None = None) -> Tensor:
    """[B, T] int64 segment ids of `idx` [B, T]: a new segment starts at every BOS and, with
    `max_tokens`, every `max_tokens` tokens after the document's start (the row's start when it
    holds no BOS before that position). Ids increase along each row, starting at 0."""
    if idx.ndim != 2:
        raise ValueError(f"document_segments needs [B, T] token ids, got shape {tuple(idx.shape)}")
    is_bos = idx == bos_id
    boundary = is_bos.clone()
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        pos = torch.arange(idx.size(1), device=idx.device).expand_as(idx)
        start = torch.cummax(torch.where(is_bos, pos, torch.zeros_like(pos)), dim=1).values  # last BOS at or before t
        boundary |= ((pos - start) % max_tokens == 0) & (pos > start)
    boundary[:, 0] = False  # the row's first position opens segment 0 whatever it holds
    return torch.cumsum(boundary.long(), dim=1)


def dense_document_mask(segments: Tensor) -> Tensor:
    """[B, 1, T, T] bool from `segments` [B, T]: query t may read key s iff s <= t and both have the
    same segment id. The diagonal is always true, so no row is empty (no NaN from the softmax)."""
    T = segments.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return (causal & (segments[:, :, None] == segments[:, None, :])).unsqueeze(1)


def document_mask_mod(segments: Tensor) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """The same rule as `dense_document_mask`, as a FlexAttention mask_mod(b, h, q_idx, kv_idx)."""

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx <= q_idx) & (segments[b, q_idx] == segments[b, kv_idx])

    return mask_mod


class DocumentMask(Protocol):
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [B, H, T, D], k and v [B, Hkv, T, D] -> [B, H, T, D], within documents only."""
        ...


@dataclass(frozen=True)
class DenseDocumentMask:
    """SDPA with an explicit [B, 1, T, T] boolean mask: the CPU path and the reference."""

    mask: Tensor

    @classmethod
    def build(cls, segments: Tensor) -> DenseDocumentMask:
        return cls(dense_document_mask(segments))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, enable_gqa=q.size(1) != k.size(1))


@dataclass(frozen=True)
class FlexDocumentMask:
    """FlexAttention with a block mask: fully masked tiles are skipped (the CUDA path)."""

    block_mask: BlockMask
    kernel: Callable[..., Tensor] = flex_attention

    @classmethod
    def build(cls, segments: Tensor, kernel: Callable[..., Tensor] = flex_attention, make_block_mask: Callable[..., BlockMask] = create_block_mask) -> FlexDocumentMask:
        B, T = segments.shape
        return cls(make_block_mask(document_mask_mod(segments), B, None, T, T, device=segments.device), kernel)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # flex_attention needs one dtype; bf16 autocast leaves q, k in the norm's dtype and v in bf16.
        q, k = q.to(v.dtype), k.to(v.dtype)
        return self.kernel(q, k, v, block_mask=self.block_mask, enable_gqa=q.size(1) != k.size(1))


@functools.cache
def _compiled_flex() -> tuple[Callable[..., Tensor], Callable[..., BlockMask]]:
    """The fused kernels, compiled once on first use (compiling at import would cost seconds everywhere)."""
    return torch.compile(flex_attention, dynamic=False), torch.compile(create_block_mask)


def build_flex_compiled(segments: Tensor) -> FlexDocumentMask:
    """FlexDocumentMask whose kernels are compiled: inside an enclosing torch.compile the plain
    functions (that compile fuses them), else the cached compiled ones (eager flex_attention would
    materialize every score)."""
    if torch.compiler.is_compiling():
        return FlexDocumentMask.build(segments)
    kernel, make_block_mask = _compiled_flex()
    return FlexDocumentMask.build(segments, kernel, make_block_mask)


# Device type -> how a document mask is built there.
DOCUMENT_MASKS: dict[str, Callable[[Tensor], DocumentMask]] = {
    "cpu": DenseDocumentMask.build,
    "cuda": build_flex_compiled,
}


def document_mask(segments: Tensor) -> DocumentMask:
    """The document mask for `segments` [B, T] on its device; build it once per forward, share it across layers."""
    builder = DOCUMENT_MASKS.get(segments.device.type)
    if builder is None:
        raise ValueError(f"document attention has no mask for device {segments.device.type!r} (known: {sorted(DOCUMENT_MASKS)})")
    return builder(segments)
