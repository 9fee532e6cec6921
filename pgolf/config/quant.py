"""Params sections of the compression half: calibrate, quantize, pack."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pgolf.config.base import Section


class CalibrateParams(Section):
    """`calibrate`: GPTQ Hessians from the trained model run on *training* tokens only."""

    batches: int = Field(16, ge=1, le=4096, description="batches of training tokens run through the model (frontier: 16)")
    batch_seqs: int = Field(4, ge=1, le=4096, description="sequences per batch")
    seq_len: int | None = Field(None, ge=8, le=65536, description="tokens per sequence; null = the checkpoint's train.seq_len")
    seed: int = Field(0, ge=0, description="seed of the random window starts in the training tokens")


class GroupQuant(Section):
    """Quantization of one tensor group."""

    bits: int = Field(6, ge=2, le=8, description="signed symmetric bit width: 2*(2**(bits-1)-1)+1 levels")
    k: float = Field(12.0, gt=0.0, le=1000.0, description="scale=std: per-row scale k*std(row)/qmax (frontier: 11.5-14)")


class QuantizeParams(Section):
    """`quantize`: per-row integer weights with GPTQ (or round-to-nearest) per tensor group."""

    method: Literal["gptq", "rtn"] = Field("gptq", description="gptq: Hessian-aware error feedback; rtn: round-to-nearest baseline")
    scale: Literal["std", "clip_search"] = Field("std", description="std: k*std(row)/qmax; clip_search: best of clip_candidates ratios of max|row|")
    clip_candidates: int = Field(32, ge=2, le=1024, description="scale=clip_search: clip ratios tried per row, from 0.3 to 1")
    attention: GroupQuant = Field(GroupQuant(bits=6, k=12.0), description="attention projections (names containing attn)")
    mlp: GroupQuant = Field(GroupQuant(bits=6, k=12.0), description="MLP matrices (names containing mlp)")
    embedding: GroupQuant = Field(GroupQuant(bits=7, k=12.0), description="token embedding / tied output head")
    other: GroupQuant = Field(GroupQuant(bits=8, k=12.0), description="any other 2-D matrix at or above min_numel")
    block_size: int = Field(128, ge=1, le=65536, description="gptq: columns per lazy batch update")
    damp_frac: float = Field(0.01, ge=0.0, le=10.0, description="gptq: damping added to diag(H), as a fraction of its mean")
    act_order: bool = Field(True, description="gptq: quantize columns in decreasing diag(H)")
    min_numel: int = Field(4096, ge=0, description="tensors with fewer elements (and all non-2-D tensors) stay float (passthrough)")
    passthrough_dtype: Literal["float16", "bfloat16", "float32"] = Field("float16", description="storage dtype of passthrough tensors")


class PackParams(Section):
    """`pack`: the artifact container, its coders, and the 16,000,000-byte gate."""

    compressor: Literal["best", "ans", "zstd", "brotli", "lzma", "raw"] = Field("best", description="coder of the integer symbols; ans: entropy coder fitted to the symbol counts; best: per tensor the smallest of ans, brotli, lzma")
    distribution: Literal["group", "tensor"] = Field("group", description="ans: one symbol distribution per tensor group or per tensor (stored in the artifact)")
    side_codec: Literal["zstd", "brotli", "lzma", "raw"] = Field("brotli", description="codec of the scales and passthrough tensors")
    shuffle: bool = Field(True, description="byte-shuffle multi-byte tensors (scales, passthrough) before a general compressor")
    zstd_level: int = Field(22, ge=1, le=22, description="zstd compression level")
    brotli_quality: int = Field(11, ge=0, le=11, description="brotli quality")
    lzma_preset: int = Field(9, ge=0, le=9, description="lzma preset (with the extreme flag)")
    reference_brotli: bool = Field(True, description="also report brotli-11 of each group's symbols in metrics/pack.json (the bar the entropy coder must beat; ~1 s per MB)")
    limit_bytes: int = Field(16_000_000, ge=1, description="challenge cap on bytes_model + bytes_code (decimal bytes)")
    code_files: list[str] = Field(
        [
            "pgolf/model/*.py",
            "pgolf/pack/artifact.py",
            "pgolf/pack/codecs.py",
            "pgolf/pack/entropy.py",
            "pgolf/pack/load.py",
            "pgolf/eval/*.py",
            "pgolf/__init__.py",
            "pgolf/errors.py",
            "pgolf/io.py",
            "pgolf/config/base.py",
            "pgolf/config/train.py",
            "pgolf/config/eval.py",
            "pgolf/pack/__init__.py",
            "pgolf/data/shards.py",
            "pgolf/tokenizer.py",
        ],
        min_length=1,
        description="globs (repo-relative) of the code a submission needs to load and evaluate the model; counted in bytes_code",
    )

    @field_validator("code_files")
    @classmethod
    def _relative(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise ValueError(f"{pattern!r} must be a path relative to the repository root")
        return value
