"""The challenge metric: val_bpb = (sum of NLL nats over scored tokens / ln 2) / (sum of their bytes).

The validation stream is one sequence of documents (each BOS + tokens). Every token after the
first is a target scored exactly once; the bytes of target t are those of token t given token
t-1 (the tokenizer's byte table), or, for case-transformed text, the original bytes the validation
byte sidecar gives token t. Evaluators fill a per-position NLL array (NaN = not scored);
`summarize` turns it into an `EvalResult` and refuses gaps or unscorable positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from pgolf.errors import DataError

LN2 = math.log(2.0)


@dataclass(frozen=True)
class ValStream:
    """Validation tokens (N,) int64 and the bytes of each as a target (N,) int64; bytes[0] = 0."""

    tokens: np.ndarray
    target_bytes: np.ndarray
    bos_id: int

    def __post_init__(self) -> None:
        if self.tokens.ndim != 1 or self.tokens.shape != self.target_bytes.shape:
            raise DataError(f"tokens {self.tokens.shape} and target_bytes {self.target_bytes.shape} must be equal 1-D shapes")
        if self.tokens.size < 2:
            raise DataError(f"validation stream has {self.tokens.size} tokens: nothing to score")
        if int(self.tokens[0]) != self.bos_id:
            raise DataError(f"validation stream must start with BOS ({self.bos_id}), starts with {int(self.tokens[0])}")

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    def doc_starts(self) -> np.ndarray:
        """Positions of every BOS (the first is 0)."""
        return np.flatnonzero(self.tokens == self.bos_id)

    def prefix(self, num_tokens: int) -> ValStream:
        """The first `num_tokens` tokens as a stream of their own."""
        n = min(num_tokens, self.num_tokens)
        return ValStream(self.tokens[:n].copy(), self.target_bytes[:n].copy(), self.bos_id)


def stream_from_tokens(tokens: np.ndarray, table: object, bos_id: int) -> ValStream:
    """A ValStream whose target bytes come from the tokenizer's byte table (`pgolf.tokenizer.ByteTable`)."""
    from pgolf.bytetable import token_bytes

    tokens = np.asarray(tokens, dtype=np.int64)
    target_bytes = np.zeros(tokens.shape, dtype=np.int64)
    target_bytes[1:] = token_bytes(table, tokens[:-1], tokens[1:])
    return ValStream(tokens, target_bytes, bos_id)


def stream_from_sidecar(tokens: np.ndarray, byte_counts: np.ndarray, bos_id: int) -> ValStream:
    """A ValStream whose target bytes are the sidecar's counts (one per token, 0 at every BOS)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    byte_counts = np.asarray(byte_counts, dtype=np.int64)
    if byte_counts.shape != tokens.shape:
        raise DataError(f"byte sidecar holds {byte_counts.size} counts for {tokens.size} validation tokens")
    at_bos = np.flatnonzero((tokens == bos_id) & (byte_counts != 0))
    if at_bos.size:
        raise DataError(f"byte sidecar counts {int(byte_counts[at_bos[0]])} bytes for the BOS at position {int(at_bos[0])} (must be 0)")
    return ValStream(tokens, byte_counts, bos_id)


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: bits per byte, nats per token, what was scored, wall time."""

    val_bpb: float
    val_loss: float
    scored_tokens: int
    scored_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def new_nll_array(stream: ValStream) -> np.ndarray:
    """Per-position NLL (nats, float64), NaN until scored."""
    return np.full(stream.num_tokens, np.nan, dtype=np.float64)


def summarize(stream: ValStream, nll: np.ndarray, seconds: float) -> EvalResult:
    """val_bpb and val_loss over positions 1..N-1, which must all be scored (position 0 never)."""
    if nll.shape != (stream.num_tokens,):
        raise ValueError(f"nll has shape {nll.shape}, stream has {stream.num_tokens} tokens")
    if not np.isnan(nll[0]):
        raise DataError("position 0 (the first BOS) was scored: it has no context")
    missing = np.flatnonzero(np.isnan(nll[1:]))
    if missing.size:
        raise DataError(f"{missing.size} validation positions were never scored (first: {int(missing[0]) + 1})")
    if not np.isfinite(nll[1:]).all():
        raise DataError("a scored NLL is infinite")
    nats = float(nll[1:].sum())
    scored_tokens = stream.num_tokens - 1
    scored_bytes = int(stream.target_bytes[1:].sum())
    if scored_bytes <= 0:
        raise DataError("the scored tokens hold no bytes: val_bpb is undefined")
    return EvalResult(
        val_bpb=nats / LN2 / scored_bytes,
        val_loss=nats / scored_tokens,
        scored_tokens=scored_tokens,
        scored_bytes=scored_bytes,
        seconds=seconds,
    )


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """NLL in nats (float64) of `targets` [...] under `logits` [..., V], normalized in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()


def log_mass(logits: Tensor) -> Tensor:
    """log of the total probability the scored distribution puts on the vocabulary (0 = normalized)."""
    return torch.logsumexp(torch.log_softmax(logits.float(), dim=-1), dim=-1)
