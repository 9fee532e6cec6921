"""Params section `quantize`: per-row integer weights per tensor group; names of quantizers and
scale rules are validated against their registries (`pgolf.quant.methods`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from pgolf.config.base import Section, known_name


class GroupQuant(Section):
    """Quantization of one tensor group."""

    bits: int = Field(6, ge=2, le=8, description="signed symmetric bit width: 2*(2**(bits-1)-1)+1 levels")
    k: float = Field(12.0, gt=0.0, le=1000.0, description="scale=std: per-row scale k*std(row)/qmax, std with Bessel's correction as the records' SDClip (records: attention 13.0, MLP 11.5, embedding 14, other 12.85)")
    salient: int = Field(0, ge=0, le=65536, description="AWQ-lite (#1908): columns per salient block of this group's matrices, kept at quantize.salient_bits inside the same solve; 0 = off (records: 64 at width 512)")


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
    lowrank_rank: int = Field(0, ge=0, le=1024, description="rank of a low-rank correction U V^T of the quantized matrices' residuals (LQER; pgolf/quant/lowrank.py); 0 = off (records: 4)")
    lowrank_top: int = Field(0, ge=0, description="lowrank: correct only the N matrices with the largest residual norm ||W - W_hat||_F; 0 = every matrix (records: 3)")
    lowrank_u_bits: int = Field(0, ge=0, le=8, description="lowrank: bits of the U factor's integer symbols (2..8, scale per run of lowrank_group); 0 = float16 values (records: 4, or 2 in the asymmetric form)")
    lowrank_v_bits: int = Field(0, ge=0, le=8, description="lowrank: bits of the V factor's integer symbols (2..8); 0 = float16 values (records: 4)")
    lowrank_group: int = Field(32, ge=1, le=65536, description="lowrank: integer factors share one float16 scale per run of this many entries of a component (records: 32-64)")
    lowrank_metric: Literal["weight", "output"] = Field("weight", description="lowrank: the fit minimises ||E - U V^T||_F (weight, the records') or the Hessian-weighted output error (output; weight without a Hessian)")
    salient_top: int = Field(1, ge=1, le=1024, description="AWQ-lite: salient blocks per matrix of a group with salient > 0, the most salient by H_jj * mean W_ij^2 (records: 1)")
    salient_bits: int = Field(8, ge=3, le=8, description="AWQ-lite: precision of the salient blocks; a group with at least this many bits is left alone (records: 8)")
    passthrough_dtype: Literal["float16", "bfloat16", "float32"] = Field("float16", description="storage dtype of passthrough tensors")

    @field_validator("lowrank_u_bits", "lowrank_v_bits")
    @classmethod
    def _factor_bits(cls, value: int) -> int:
        if value == 1:
            raise ValueError("must be 0 (float16 factor) or 2..8 bits")
        return value

    @field_validator("method", "scale")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        from pgolf.quant.methods import QUANTIZERS, SCALE_RULES

        return known_name(value, {"method": QUANTIZERS, "scale": SCALE_RULES}[info.field_name])
