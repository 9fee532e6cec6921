"""Params section `quantize`: per-row integer weights per tensor group; names of quantizers and
scale rules are validated against their registries (`pgolf.quant.methods`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from pgolf.config.base import Section, known_name


class GroupQuant(Section):
    """Quantization of one tensor group."""

    bits: int = Field(6, ge=2, le=8, description="signed symmetric bit width: 2*(2**(bits-1)-1)+1 levels")
    k: float = Field(12.0, gt=0.0, le=1000.0, description="scale=std: per-row scale k*std(row)/qmax (frontier: 11.5-14)")


class QuantizeParams(Section):
    """`quantize`: per-row integer weights with GPTQ (or round-to-nearest) per tensor group."""

    method: str = Field("gptq", description="a name of pgolf.quant.methods.QUANTIZERS: gptq (Hessian-aware error feedback) | rtn (round-to-nearest baseline)")
    scale: str = Field("std", description="a name of pgolf.quant.methods.SCALE_RULES: std (k*std(row)/qmax) | clip_search (best of clip_candidates ratios of max|row|)")
    clip_candidates: int = Field(32, ge=2, le=1024, description="scale=clip_search: clip ratios tried per row, from 0.3 to 1")
    attention: GroupQuant = Field(GroupQuant(bits=6, k=12.0), description="attention projections (names containing attn)")
    mlp: GroupQuant = Field(GroupQuant(bits=6, k=12.0), description="MLP matrices (names containing mlp)")
    embedding: GroupQuant = Field(GroupQuant(bits=7, k=12.0), description="token embedding / tied output head")
    other: GroupQuant = Field(GroupQuant(bits=8, k=12.0), description="any other 2-D matrix at or above min_numel")
    block_size: int = Field(128, ge=1, le=65536, description="gptq: columns per lazy batch update")
    damp_frac: float = Field(0.01, ge=0.0, le=10.0, description="gptq: damping added to diag(H), as a fraction of its mean")
    act_order: bool = Field(True, description="gptq: quantize columns in decreasing diag(H)")
    min_numel: int = Field(4096, ge=0, description="tensors with fewer elements (and all non-2-D tensors) stay float (passthrough)")
    lowrank_rank: int = Field(0, ge=0, le=1024, description="rank of a float16 low-rank correction U V^T of each quantized matrix's residual (pgolf/quant/lowrank.py); 0 = off")
    passthrough_dtype: Literal["float16", "bfloat16", "float32"] = Field("float16", description="storage dtype of passthrough tensors")

    @field_validator("method", "scale")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        from pgolf.quant.methods import QUANTIZERS, SCALE_RULES

        return known_name(value, {"method": QUANTIZERS, "scale": SCALE_RULES}[info.field_name])
