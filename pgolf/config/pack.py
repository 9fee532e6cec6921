"""Params section `pack`: the artifact container, its coders, and the 16,000,000-byte gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pgolf.config.base import Section


class PackParams(Section):
    """`pack`: the artifact container, its coders, and the 16,000,000-byte gate."""

    compressor: str = Field("best", description="a name of pgolf.pack.codecs.SYMBOL_CODERS, the coder of the integer symbols: best (per tensor the smallest of ans, brotli, lzma) | ans (entropy coder fitted to the symbol counts) | zstd | brotli | lzma | raw")
    distribution: Literal["group", "tensor"] = Field("group", description="ans: one symbol distribution per tensor group or per tensor (stored in the artifact)")
    side_codec: str = Field("brotli", description="a name of pgolf.pack.codecs.CODECS: codec of the scales, extras and passthrough tensors (zstd | brotli | lzma | raw)")
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

    @field_validator("compressor")
    @classmethod
    def _known_compressor(cls, value: str) -> str:
        from pgolf.pack.codecs import SYMBOL_CODERS

        if value not in SYMBOL_CODERS:
            raise ValueError(f"must be one of {', '.join(map(repr, SYMBOL_CODERS))}")
        return value

    @field_validator("side_codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        from pgolf.pack.codecs import CODECS

        if value not in CODECS:
            raise ValueError(f"must be one of {', '.join(map(repr, CODECS))}")
        return value
