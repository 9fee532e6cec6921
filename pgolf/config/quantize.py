"""Params section `quantize`: per-row integer weights per tensor group; names of quantizers and
scale rules are validated against their registries (`pgolf.quant.methods`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pgolf.config.base import Section, known_name


class GroupQuant(Section):
    """Quantization of one tensor group."""

    bits: int = Field(6, ge=2, le=8, description="signed symmetric bit width: 2*(2**(bits-1)-1)+1 levels")
    k: float = Field(12.0, gt=0.0, le=1000.0, description="scale=std: per-row scale k*std(row)/qmax, std with Bessel's correction as the records' SDClip (records: attention 13.0, MLP 11.5, embedding 14, other 12.85)")
    salient: int = Field(0, ge=0, le=65536, description="AWQ-lite (#1908): columns per salient block of this group's matrices, kept at quantize.salient_bits inside the same solve; 0 = off (records: 64 at width 512)")
    grid: str = Field("symmetric", description="a name of pgolf.quant.grids.GRIDS, the integer grid of the symbols: symmetric (q*s, zero a level: 2*(2**(bits-1)-1)+1 levels) | midrise ((q+1/2)*s, all 2**bits levels, no zero: the Q^2 proposal's grid, 2 bits = {-3,-1,1,3}*s/2)")
    scale_group: int = Field(0, ge=0, le=65536, description="input columns sharing one float16 scale (Q^2: per-group scales); 0 = one scale per row (the records')")

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: str) -> str:
        from pgolf.quant.grids import GRIDS

        return known_name(value, GRIDS)

    @model_validator(mode="after")
    def _plain_rows(self) -> "GroupQuant":
        if self.salient and (self.scale_group or self.grid != "symmetric"):
            raise ValueError("salient blocks need one scale per row on the symmetric grid (scale_group 0, grid symmetric)")
        return self


class FitWeights(Section):
    """Weights of the distortion proxy's components in the fit to a byte budget (pgolf/quant/ratedistortion.py)."""

    attention: float = Field(1.0, ge=0.0, le=1e6, description="weight of the attention matrices' relative output errors")
    mlp: float = Field(1.0, ge=0.0, le=1e6, description="weight of the MLP matrices' relative output errors")
    embedding: float = Field(1.0, ge=0.0, le=1e6, description="weight of the embedding/head's relative output error (relative weight error without a head Hessian)")
    other: float = Field(1.0, ge=0.0, le=1e6, description="weight of the other matrices' relative output errors")
    embedding_lookup: float = Field(0.0, ge=0.0, le=1e6, description="weight of the embedding's relative weight error (its lookup role, which a head Hessian does not see)")


class QuantizeParams(Section):
    """`quantize`: per-row integer weights with GPTQ (or round-to-nearest) per tensor group."""

    method: str = Field("gptq", description="a name of pgolf.quant.methods.QUANTIZERS: gptq (Hessian-aware error feedback) | rtn (round-to-nearest baseline) | ternary (train.model.block_linear=ternary checkpoints: the block matrices stored exactly as the model ternarizes them, trits + per-group float16 scales (#640); the other matrices by gptq at their group's bits, the record's 8)")
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
    target_bytes: int | None = Field(None, ge=1, description="fit to a byte budget (issue 19): bits and k per group chosen to minimise the weighted distortion proxy with bytes_total (packed model, as pack params code it, + bytes_code of pack.code_modules) <= this; null = off, the groups' bits and k as given")
    fit_bits: list[int] = Field([4, 5, 6, 7, 8], min_length=1, description="target_bytes: bit widths tried per group")
    fit_k_min: float = Field(6.0, gt=0.0, le=1000.0, description="target_bytes: smallest k tried per group (scale=std)")
    fit_k_max: float = Field(24.0, gt=0.0, le=1000.0, description="target_bytes: largest k tried per group (scale=std)")
    fit_k_steps: int = Field(24, ge=1, le=256, description="target_bytes: k values tried per group and bit width, geometrically spaced from fit_k_min to fit_k_max (the fine knob that lets the fit land close under its target)")
    fit_weights: FitWeights = Field(FitWeights(), description="target_bytes: weights of the proxy's components (1 = uncalibrated; `pgolf rd` fits them to real quantization gaps)")
    threads: int = Field(0, ge=0, le=256, description="torch CPU threads of the stage (GPTQ on small matrices runs fastest on 1); 0 = torch's default")

    @field_validator("lowrank_u_bits", "lowrank_v_bits")
    @classmethod
    def _factor_bits(cls, value: int) -> int:
        if value == 1:
            raise ValueError("must be 0 (float16 factor) or 2..8 bits")
        return value

    @field_validator("fit_bits")
    @classmethod
    def _fit_bits(cls, value: list[int]) -> list[int]:
        if any(not 2 <= bits <= 8 for bits in value) or len(set(value)) != len(value):
            raise ValueError("must be distinct bit widths in 2..8")
        return sorted(value)

    @model_validator(mode="after")
    def _k_range(self) -> "QuantizeParams":
        if self.fit_k_min > self.fit_k_max:
            raise ValueError(f"fit_k_min {self.fit_k_min} exceeds fit_k_max {self.fit_k_max}")
        grouped = [g for g in ("attention", "mlp", "embedding", "other") if getattr(self, g).scale_group or getattr(self, g).grid != "symmetric"]
        if self.lowrank_rank and grouped:
            raise ValueError(f"lowrank needs one scale per row on the symmetric grid; {', '.join(grouped)} set scale_group or grid")
        return self

    @field_validator("method", "scale")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        from pgolf.quant.methods import QUANTIZERS, SCALE_RULES

        return known_name(value, {"method": QUANTIZERS, "scale": SCALE_RULES}[info.field_name])
