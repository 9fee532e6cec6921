"""Params sections of the data half: fetch, tokenizer, export, audit."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pgolf.casetransform import TEXT_TRANSFORMS
from pgolf.config.base import Section, known_name

BuiltinSource = Literal["sotu", "shakespeare", "django_docs", "pydoc_topics"]


class FetchParams(Section):
    """`fetch`: where the documents (or official pre-tokenized shards) come from."""

    source: Literal["builtin", "hf"] = Field("builtin", description="builtin: pinned offline corpus; hf: the official dataset repo on the hub")
    builtin: list[BuiltinSource] = Field(["sotu"], min_length=1, description="pinned corpora concatenated for source=builtin (see README: 'The default corpus')")
    doc_target_bytes: int = Field(4000, ge=200, le=1_000_000, description="builtin: long texts are split at paragraph breaks into documents of about this many UTF-8 bytes")
    shuffle_seed: int = Field(1337, ge=0, le=2**63 - 1, description="builtin: seed of the stable document shuffle (validation = the first export.val_docs)")
    cache_dir: str = Field(".cache/pgolf", min_length=1, description="download cache: pinned archives (re-verified by sha256) and the hub client's cache")
    repo_id: str = Field("willdepueoai/parameter-golf", pattern=r"^[\w.-]+/[\w.-]+$", description="hf: dataset repo id")
    revision: str = Field("main", min_length=1, description="hf: branch, tag or commit of the dataset repo")
    endpoint: str | None = Field(None, pattern=r"^https?://[^\s/]+", description="hf: hub endpoint URL (http or https); null = the client's default")
    remote_root: str = Field("datasets", pattern=r"^([\w.-]+(/[\w.-]+)*)?$", description="hf: folder inside the repo holding manifest.json (relative, no '..'; empty = the repo root)")
    variant: str = Field("sp1024", pattern=r"^(sp\d+(_[a-z0-9]+)*|byte260)$", description="hf: tokenizer variant of the shards (datasets/fineweb10B_<variant>), e.g. sp1024, sp8192, sp8192_lossless_caps_caseops_v1_reserved")
    train_shards: int = Field(1, ge=0, le=10_000, description="hf: how many training shards to download (the first N)")
    with_docs: bool = Field(False, description="hf: also download the raw documents (docs_selected.jsonl) for retokenizing")
    val_byte_sidecar: bool = Field(False, description="hf: also download the validation byte sidecar (fineweb_val_bytes_*.bin) of a case-transformed variant")

    @field_validator("builtin")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each corpus may be listed once")
        return value

    @field_validator("remote_root")
    @classmethod
    def _inside_repo(cls, value: str) -> str:
        if any(part in (".", "..") for part in value.split("/")):
            raise ValueError("must not contain '.' or '..' path parts")
        return value


class TokenizerParams(Section):
    """`tokenizer`: SentencePiece BPE with the official settings, trained on training documents only."""

    reuse: Literal["none", "official"] = Field("none", description="official: use the tokenizer fetched from the hub instead of training one")
    vocab_size: int = Field(1024, ge=256, le=65536, description="vocabulary size (ids are stored as uint16)")
    max_train_bytes: int = Field(50_000_000, ge=1_000, description="cap on UTF-8 bytes of training documents fed to the trainer (taken in stable order)")
    character_coverage: float = Field(0.999, gt=0.9, le=1.0, description="SentencePiece character_coverage (official: 0.999)")
    num_threads: int = Field(2, ge=1, le=256, description="trainer threads")
    text_transform: str = Field("none", description="lossless transform applied to the text before training and export: none | caseops (the records' lossless_caps_caseops_v1; bpb then comes from the validation byte sidecar)")

    @field_validator("text_transform")
    @classmethod
    def _known_transform(cls, value: str) -> str:
        return known_name(value, TEXT_TRANSFORMS)


class ExportParams(Section):
    """`export`: documents -> token shards in the official binary format."""

    val_docs: int = Field(250, ge=1, description="the first N documents of the stable order form the validation set (official: 50000)")
    shard_tokens: int = Field(100_000_000, ge=1_024, le=2**31 - 1, description="tokens per shard (official: 10^8)")
    workers: int = Field(2, ge=1, le=256, description="tokenizer processes")
    batch_docs: int = Field(512, ge=1, description="documents per tokenization task")


class AuditParams(Section):
    """`audit`: exact byte accounting and integrity checks on the validation shards."""

    compare_source_text: bool = Field(True, description="also check decoded validation docs against the normalized source documents when they are available")
    overlap: bool = Field(True, description="fail when a validation document (its tokens between BOS marks) is also a training document")
    overlap_min_tokens: int = Field(1, ge=1, description="overlap check: validation documents shorter than this many tokens are not checked")
    workers: int = Field(2, ge=1, le=256, description="processes streaming the training shards in the overlap check (does not change results)")
