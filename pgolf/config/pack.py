"""Params section `pack`: the artifact container, its coders, and the 16,000,000-byte gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from pgolf.config.base import Section, known_name


class PackParams(Section):
    """`pack`: the artifact container, its coders, and the 16,000,000-byte gate."""

    compressor: str = Field("best", description="a name of pgolf.pack.codecs.SYMBOL_CODERS, the coder of each symbol stream: best (per stream the smallest of ans, brotli, lzma) | ans (entropy coder fitted to the symbol counts) | zstd | brotli | lzma | raw")
    distribution: Literal["group", "role", "tensor"] = Field("group", description="the unit of a symbol stream (each with its own ans distributions): a tensor group, a role across layers (every layer's attn.c_q.weight: the records' per-group packing, PR #1586), or a tensor")
    layout: Literal["row", "column"] = Field("column", description="symbol streams store each matrix row-major, or transposed (column-major, as the records' per-group packing does): ans classes then model weight columns")
    ans_clusters: int = Field(16, ge=1, le=64, description="ans: at most this many distributions per stream, each run (stored row: a weight column when column-major) coded by one; K in 1, 2, 4, ... chosen by bytes, the classes stored (1 = one order-0 distribution per stream)")
    row_refs: bool = Field(True, description="store a row of a quantized matrix (at most 7 bits) as its difference from its nearest row where that codes smaller: the near-duplicate rows of trained embeddings that the records' similarity sort exposes to lrzip (PR #1586); the references are stored; the differences need a class of their own, so use ans_clusters > 1")
    transform: str = Field("none", description="none, or a name of pgolf.pack.transforms.SYMBOL_TRANSFORMS applied to each symbol stream it fits before its coder: trits (ternary symbols 5 per byte in base 3, record #640) | bits (each symbol Gray-coded in its bit width, 4 per byte at 2 bits: the Q^2 proposal)")
    side_codec: str = Field("brotli", description="a name of pgolf.pack.codecs.CODECS: codec of the scales, extras and passthrough tensors (zstd | brotli | lzma | raw)")
    shuffle: bool = Field(True, description="byte-shuffle multi-byte tensors (scales, passthrough) before a general compressor")
    zstd_level: int = Field(22, ge=1, le=22, description="zstd compression level")
    brotli_quality: int = Field(11, ge=0, le=11, description="brotli quality")
    lzma_preset: int = Field(9, ge=0, le=9, description="lzma preset (with the extreme flag)")
    reference_brotli: bool = Field(True, description="also report brotli-11 of each group's symbols in metrics/pack.json (the bar the entropy coder must beat; ~1 s per MB)")
    limit_bytes: int = Field(16_000_000, ge=1, description="challenge cap on bytes_model + bytes_code (decimal bytes)")
    code_modules: list[str] = Field(
        ["pgolf.runtime"],
        min_length=1,
        description="entry modules whose pgolf import closure is the code counted in bytes_code (the artifact runtime: loading and evaluating an artifact)",
    )

    @field_validator("code_modules")
    @classmethod
    def _dotted(cls, value: list[str]) -> list[str]:
        for name in value:
            if not all(part.isidentifier() for part in name.split(".")) or not name.startswith("pgolf"):
                raise ValueError(f"{name!r} must be a dotted pgolf module name such as pgolf.runtime")
        return value

    @field_validator("compressor", "side_codec", "transform")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        from pgolf.pack.codecs import CODECS, SYMBOL_CODERS
        from pgolf.pack.transforms import SYMBOL_TRANSFORMS

        return known_name(value, {"compressor": SYMBOL_CODERS, "side_codec": CODECS, "transform": {"none": None, **SYMBOL_TRANSFORMS}}[info.field_name])
