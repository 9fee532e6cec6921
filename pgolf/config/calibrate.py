"""Params section `calibrate`: GPTQ Hessians from training tokens (never validation)."""

from __future__ import annotations

from pydantic import Field

from pgolf.config.base import Section


class CalibrateParams(Section):
    """`calibrate`: GPTQ Hessians from the trained model run on *training* tokens only."""

    batches: int = Field(16, ge=1, le=4096, description="batches of training tokens run through the model (frontier: 16)")
    batch_seqs: int = Field(4, ge=1, le=4096, description="sequences per batch")
    seq_len: int | None = Field(None, ge=8, le=65536, description="tokens per sequence; null = the checkpoint's train.seq_len")
    seed: int = Field(0, ge=0, description="seed of the random window starts in the training tokens")
    head_hessian: bool = Field(False, description="also collect H of a tied output head from the final norm's output (its input), so quantize runs GPTQ on the embedding instead of round-to-nearest (records: on)")
    on_train_ranks: bool = Field(False, description="collect the Hessians on the training ranks right after the loop, inside the training budget (the train stage reads this section; records: on, 600 s covers loop + calibration); the calibrate stage reuses them when its sampling matches, else collects them itself and says so")
