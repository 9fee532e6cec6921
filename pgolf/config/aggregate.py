"""Params section `aggregate`: extra training seeds and the reference a record claim is tested against."""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from pgolf.config.base import Section

RECORD_NAME = "record #2135"  # CHALLENGE.md, "The frontier": best record 1.05651 bpb, PR #2135, 2026-05-01
RECORD_MEAN_BPB = 1.05651


class AggregateParams(Section):
    """`aggregate`: mean/std of val_bpb over seeds and the leaderboard's tests against a reference."""

    seeds: list[int] = Field([], max_length=16, description="other training seeds to aggregate with the main run's train.seed (which always joins; listing it here too is allowed); each other seed reruns train, calibrate, quantize, pack and the evaluations")
    reference_name: str = Field(RECORD_NAME, description="what the reference numbers are")
    reference_mean_bpb: float = Field(RECORD_MEAN_BPB, gt=0.0, le=10.0, description="reference mean val_bpb (unused when reference_bpb is given)")
    reference_std_bpb: float = Field(0.0005, ge=0.0, le=1.0, description="reference sample std of val_bpb over its seeds (CHALLENGE.md: ~0.0003-0.0006 at the top; #2135's own per-seed values are not listed there); unused when reference_bpb is given")
    reference_n: int = Field(3, ge=1, le=1000, description="number of seeds behind the reference mean (unused when reference_bpb is given)")
    reference_bpb: list[float] = Field([], max_length=1000, description="the reference's per-seed val_bpb; when given (at least 2), their mean, sample std and count replace reference_mean_bpb, reference_std_bpb and reference_n")
    alpha: float = Field(0.01, gt=0.0, lt=0.5, description="significance level of the record test (the challenge's p < 0.01)")
    min_gain_nats: float = Field(0.005, ge=0.0, description="required improvement in nats/token (val_loss units) for a record claim, shown at p < alpha")
    min_seeds: int = Field(3, ge=1, le=16, description="seeds a record's mean needs (the leaderboard: mean over >= 3 seeds)")
    chronological_alpha: float = Field(0.25, gt=0.0, lt=1.0, description="significance level of the chronological leaderboard's test: lower than the frontier before it at p < this (parameter-golf PR #1902), no margin")

    @field_validator("seeds")
    @classmethod
    def _unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be >= 0")
        return seeds

    @field_validator("reference_bpb")
    @classmethod
    def _per_seed(cls, values: list[float]) -> list[float]:
        if len(values) == 1:
            raise ValueError("needs at least 2 per-seed values for a Welch test (or none: then reference_mean_bpb, reference_std_bpb and reference_n)")
        if any(not (math.isfinite(v) and 0.0 < v <= 10.0) for v in values):
            raise ValueError("per-seed val_bpb must be finite, > 0 and <= 10")
        return values
