"""Params sections of the evaluation stages: `eval_sliding`, `eval_ttt` (and `plain`, `tilt` for the CLI).

Defaults suit the default small model (trained at seq_len 256) on a 2-core CPU; the values of
the public records are given in descriptions as "records: ...". Every method runs the legality
check (pgolf/eval/legality.py) on a prefix of the stream: `legality_*` keys size it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pgolf.config.base import Section


class EvalSpeedParams(Section):
    """How fast an evaluation runs, shared by every method (pgolf/eval/accel.py): precision, compile,
    ranks, and whether the float checkpoint is rescored for the quantization gap. None changes what is scored."""

    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16: the method runs under bf16 autocast (log-softmax and NLL stay float32/float64); fp32: the reference; auto: bf16 on CUDA, fp32 on CPU (records: bf16)")
    compile: Literal["auto", "on", "off"] = Field("auto", description="on: the window scorer's forward is torch.compile'd at fixed shapes (batches padded to batch_size rows, widths to a few buckets); auto: on CUDA only (records: compiled)")
    nproc: int = Field(1, ge=1, le=64, description="processes (GPUs) the stage runs on under torchrun; each scores a disjoint share and the scores are merged exactly (records: 8)")
    gap: Literal["rescore", "off"] = Field("rescore", description="rescore: score the float checkpoint the same way for quantization_gap (a second full pass); off: skip it (quantization_gap null)")


class LegalityParams(EvalSpeedParams):
    """The legality probe's settings shared by the window-scored methods (pgolf/eval/legality.py)."""

    legality_tokens: int = Field(4096, ge=16, le=1_000_000, description="the legality check reruns the method on the first N validation tokens (several documents)")
    legality_cuts: int = Field(4, ge=1, le=64, description="positions t spread over that prefix at which tokens >= t are perturbed for check C1")
    legality_samples: int = Field(64, ge=1, le=65536, description="positions whose scored distribution is materialized over the vocabulary for check C2")


class EvalPlainParams(LegalityParams):
    """Non-overlapping evaluation (`pgolf eval --method plain`): consecutive windows of seq_len."""

    seq_len: int = Field(256, ge=1, le=65536, description="tokens of context per window; windows do not overlap (official: 1024)")
    batch_size: int = Field(32, ge=1, le=65536, description="windows per forward pass")


class EvalSlidingParams(LegalityParams):
    """`eval_sliding`: windows of `window` tokens every `stride`; each later window scores its last `stride`."""

    window: int = Field(256, ge=1, le=65536, description="tokens of context per window (records: 2048)")
    stride: int = Field(128, ge=1, le=65536, description="tokens between window starts, the tokens each later window scores (records: 64)")
    batch_size: int = Field(32, ge=1, le=65536, description="windows per forward pass")
    doc_bounded: bool = Field(False, description="true: the context never reaches back past the BOS of the token's document (windows restart at each document)")

    @model_validator(mode="after")
    def _stride_fits(self) -> EvalSlidingParams:
        if self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must be <= window ({self.window})")
        return self


class EvalTTTParams(EvalSpeedParams):
    """`eval_ttt`: score-first test-time training over document chunks, with a legality check."""

    adapter: Literal["lora", "sgd"] = Field("lora", description="lora: a LoRA per document lane on the linear layers; sgd: plain SGD on every weight of the model")
    chunk_tokens: int = Field(128, ge=1, le=65536, description="targets per chunk: a chunk is scored, then trained on (records: 48)")
    window: int = Field(256, ge=2, le=65536, description="most tokens of context when scoring or training a chunk; must be >= chunk_tokens (records: 2048-3072)")
    batch_docs: int = Field(32, ge=1, le=4096, description="documents adapted side by side (lora only; lanes are independent); sgd needs 1 (records: 64)")
    lr: float = Field(0.01, ge=0.0, le=10.0, description="learning rate (Adam for lora, SGD for sgd); 0 reproduces val_bpb_no_ttt exactly")
    steps: int = Field(1, ge=1, le=1000, description="optimizer steps on each chunk after it is scored")
    lora_rank: int = Field(8, ge=1, le=1024, description="LoRA rank (records: 80-96 on a 512-wide model)")
    lora_alpha: float = Field(16.0, gt=0.0, le=1.0e4, description="LoRA scale = lora_alpha / lora_rank")
    lora_targets: str = Field(r"(proj|fc)$", min_length=1, description="regex (re.search) on module names: matching nn.Linear layers get a LoRA (records: q, v, attention output, MLP and the head, K left out: here (c_q|c_v|proj|fc)$)")
    reset: Literal["document", "keep"] = Field("document", description="document: each document starts from fresh LoRA and optimizer state; keep: a lane carries them to its next document")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="sgd: momentum")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="lora: Adam beta1")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="lora: Adam beta2")
    seed: int = Field(0, ge=0, description="seed of the LoRA A matrices and of the legality check's perturbations")
    legality_tokens: int = Field(4096, ge=16, le=1_000_000, description="the legality check reruns TTT on the first N validation tokens (several documents)")
    legality_cuts: int = Field(4, ge=1, le=64, description="positions t spread over that prefix, each inside a chunk, at which tokens >= t are perturbed for check C1")
    doc_order: Literal["stream", "length"] = Field("stream", description="stream: documents enter free lanes in stream order; length: documents sorted by length into batches of batch_docs that start together, longest batch first (records: length)")
    width_multiple: int = Field(1, ge=1, le=65536, description="each round's padded width is rounded up to a multiple of this (fixed shapes for torch.compile; records: 64)")
    global_phase_docs: int = Field(0, ge=0, le=10_000_000, description="lora: after this many scored documents (evaluation order, at a batch boundary) the base weights are trained on the scored documents; 0 = off (records: 2000-2500, #1610)")
    global_phases: int = Field(1, ge=1, le=64, description="global phases, after global_phase_docs * k / global_phases documents each (records: 1, #1610; 3 in #1736)")
    global_lr: float = Field(0.001, ge=0.0, le=10.0, description="global phase: SGD learning rate on the base weights (records: 0.001)")
    global_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="global phase: SGD momentum (records: 0.9)")
    global_epochs: int = Field(1, ge=1, le=1000, description="global phase: passes over the scored documents (records: 1)")
    global_seq_len: int = Field(256, ge=1, le=65536, description="global phase: most targets per training sequence; each document is cut into such pieces (records: 2048, documents kept apart)")
    global_batch_seqs: int = Field(32, ge=1, le=65536, description="global phase: sequences per SGD step, split over ranks (records: 32)")
    global_grad_clip: float = Field(0.0, ge=0.0, le=1.0e6, description="global phase: clip of the gradient's global norm; 0 = off (records: 1.0)")
    warm_start_a: bool = Field(False, description="lora: a new document zeroes only B and keeps the lane's A from earlier documents of that lane (records: true, #1767)")
    short_doc_tokens: int = Field(0, ge=0, le=10_000_000, description="documents with at most this many targets use chunks of short_chunk_tokens; 0 = off (#2014)")
    short_chunk_tokens: int = Field(32, ge=1, le=65536, description="targets per chunk of a short document (short_doc_tokens > 0); must be <= window")

    @field_validator("lora_targets")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EvalTTTParams:
        if self.chunk_tokens > self.window:
            raise ValueError(f"chunk_tokens ({self.chunk_tokens}) must be <= window ({self.window})")
        if self.adapter == "sgd" and self.batch_docs != 1:
            raise ValueError(f"batch_docs must be 1 when adapter is sgd (lanes would share weights across documents), got {self.batch_docs}")
        if self.global_phase_docs > 0 and self.adapter != "lora":
            raise ValueError("global_phase_docs needs adapter lora (the global phase trains the base weights under the per-document LoRAs)")
        if self.warm_start_a and (self.adapter != "lora" or self.reset != "document"):
            raise ValueError("warm_start_a needs adapter lora and reset document (it changes what a document reset keeps)")
        if self.short_doc_tokens > 0 and self.short_chunk_tokens > self.window:
            raise ValueError(f"short_chunk_tokens ({self.short_chunk_tokens}) must be <= window ({self.window})")
        return self


class EvalTiltParams(EvalSlidingParams):
    """`tilt`: sliding windows whose scores are tilted towards the causal n-gram hint (PR #1145 lineage, #2135)."""

    order: int = Field(3, ge=1, le=64, description="tokens of context the n-gram counts are keyed on (records: 8-16, for a far stronger model)")
    buckets: int = Field(1 << 22, ge=1, le=1 << 32, description="hash buckets of the contexts; colliding contexts share counts (records: 2^22-2^26)")
    min_count: int = Field(1, ge=1, le=1_000_000, description="a hint needs its continuation seen at least this often in its context (records: 2-3)")
    min_share: float = Field(0.7, ge=0.0, le=1.0, description="a hint needs its continuation to hold at least this share of its context's count (records: 0.5-0.7)")
    beta: float = Field(2.0, ge=0.0, le=20.0, description="log of the boost of the hinted token before renormalizing; 0 reproduces sliding exactly (records: 2.0 x the share)")
