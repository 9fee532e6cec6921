"""Document segments of a token batch, and the attention masks built from them, so that attention
and smearing never cross a BOS; a local window (pgolf.model.window) composes with them.

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
from torch.nn.attention.flex_attention import BlockMask, and_masks, create_block_mask, flex_attention

from pgolf.model.window import dense_window_mask, window_mask_mod

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


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


def document_mask_mod(segments: Tensor) -> MaskMod:
    """The same rule as `dense_document_mask`, as a FlexAttention mask_mod(b, h, q_idx, kv_idx)."""

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx <= q_idx) & (segments[b, q_idx] == segments[b, kv_idx])

    return mask_mod


@dataclass(frozen=True)
class MaskRule:
    """Which keys query t reads, besides s <= t: with `segments` [B, T] only its own segment's, with
    `window` W > 0 only the last W positions (t - W < s). Neither: plain causal attention."""

    length: int
    device: torch.device
    segments: Tensor | None = None
    window: int = 0

    @classmethod
    def of(cls, segments: Tensor, window: int = 0) -> MaskRule:
        return cls(segments.size(1), segments.device, segments, window)

    @property
    def batch(self) -> int | None:
        """Rows of the mask: B with segments, else None (one mask broadcast over the batch)."""
        return None if self.segments is None else self.segments.size(0)

    def dense(self) -> Tensor:
        """[B or 1, 1, T, T] bool; the diagonal is always true, so no row is empty (no NaN from the softmax)."""
        T = self.length
        mask = (torch.ones(T, T, dtype=torch.bool, device=self.device).tril() if self.segments is None else dense_document_mask(self.segments)[:, 0])
        if self.window:
            mask = mask & dense_window_mask(T, self.window, self.device)
        return mask.view(-1, 1, T, T)

    def mask_mod(self) -> MaskMod:
        mods = ([] if self.segments is None else [document_mask_mod(self.segments)]) + ([window_mask_mod(self.window)] if self.window else [])
        if not mods:
            return window_mask_mod(self.length)  # a window as long as the sequence: plain causal
        return mods[0] if len(mods) == 1 else and_masks(*mods)


class DocumentMask(Protocol):
    """An attention mask built once per forward and shared by every layer (documents and/or a window);
    `segments`: the document ids it was built from (None for a window alone), for the short convolution."""

    segments: Tensor | None

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [B, H, T, D], k and v [B, Hkv, T, D] -> [B, H, T, D], reading only the keys the mask allows."""
        ...


@dataclass(frozen=True)
class DenseDocumentMask:
    """SDPA with an explicit [B or 1, 1, T, T] boolean mask: the CPU path and the reference."""

    mask: Tensor
    segments: Tensor | None = None

    @classmethod
    def build(cls, segments: Tensor) -> DenseDocumentMask:
        return cls.from_rule(MaskRule.of(segments))

    @classmethod
    def from_rule(cls, rule: MaskRule) -> DenseDocumentMask:
        return cls(rule.dense(), rule.segments)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, enable_gqa=q.size(1) != k.size(1))


@dataclass(frozen=True)
class FlexDocumentMask:
    """FlexAttention with a block mask: fully masked tiles are skipped (the CUDA path)."""

    block_mask: BlockMask
    kernel: Callable[..., Tensor] = flex_attention
    segments: Tensor | None = None

    @classmethod
    def build(cls, segments: Tensor, kernel: Callable[..., Tensor] = flex_attention, make_block_mask: Callable[..., BlockMask] = create_block_mask) -> FlexDocumentMask:
        return cls.from_rule(MaskRule.of(segments), kernel, make_block_mask)

    @classmethod
    def from_rule(cls, rule: MaskRule, kernel: Callable[..., Tensor] = flex_attention, make_block_mask: Callable[..., BlockMask] = create_block_mask) -> FlexDocumentMask:
        T = rule.length
        return cls(make_block_mask(rule.mask_mod(), rule.batch, None, T, T, device=rule.device), kernel, rule.segments)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # flex_attention needs one dtype; bf16 autocast leaves q, k in the norm's dtype and v in bf16.
        q, k = q.to(v.dtype), k.to(v.dtype)
        return self.kernel(q, k, v, block_mask=self.block_mask, enable_gqa=q.size(1) != k.size(1))


@functools.cache
def _compiled_flex() -> tuple[Callable[..., Tensor], Callable[..., BlockMask]]:
    """The fused kernels, compiled once on first use (compiling at import would cost seconds everywhere)."""
    return torch.compile(flex_attention, dynamic=False), torch.compile(create_block_mask)


def build_flex_compiled(rule: Tensor | MaskRule) -> FlexDocumentMask:
    """FlexDocumentMask (of a MaskRule, or of segments) whose kernels are compiled: inside an enclosing
    torch.compile the plain functions (that compile fuses them), else the cached compiled ones (eager
    flex_attention would materialize every score)."""
    rule = rule if isinstance(rule, MaskRule) else MaskRule.of(rule)
    if torch.compiler.is_compiling():
        return FlexDocumentMask.from_rule(rule)
    kernel, make_block_mask = _compiled_flex()
    return FlexDocumentMask.from_rule(rule, kernel, make_block_mask)


# Device type -> how an attention mask is built there. Never a dense mask on CUDA.
DOCUMENT_MASKS: dict[str, Callable[[MaskRule], DocumentMask]] = {
    "cpu": DenseDocumentMask.from_rule,
    "cuda": build_flex_compiled,
}


def attention_mask(rule: MaskRule) -> DocumentMask:
    """The mask of `rule` on its device; build it once per forward, share it across layers."""
    builder = DOCUMENT_MASKS.get(rule.device.type)
    if builder is None:
        raise ValueError(f"document attention has no mask for device {rule.device.type!r} (known: {sorted(DOCUMENT_MASKS)})")
    return builder(rule)


def document_mask(segments: Tensor, window: int = 0) -> DocumentMask:
    """The document mask for `segments` [B, T] (within a `window`, if > 0) on its device."""
    return attention_mask(MaskRule.of(segments, window))


def mask_segments(mask: Tensor | DocumentMask | None) -> Tensor | None:
    """The document ids behind what a block receives: the segments themselves, or those a mask was built from."""
    if mask is None or isinstance(mask, Tensor):
        return mask
    return mask.segments
