"""Params section `aggregate`: extra training seeds and the reference a record claim is tested against."""

from __future__ import annotations

from pydantic import Field, field_validator

from pgolf.config.base import Section


class AggregateParams(Section):
    """`aggregate`: mean/std of val_bpb over seeds and a one-sided Welch t-test against a reference."""

    seeds: list[int] = Field([], max_length=16, description="other training seeds to aggregate with the main run's train.seed (which always joins; listing it here too is allowed); each other seed reruns train, calibrate, quantize, pack and the evaluations")
    reference_name: str = Field("official baseline", description="what the reference numbers are")
    reference_mean_bpb: float = Field(1.2244, gt=0.0, le=10.0, description="reference mean val_bpb")
    reference_std_bpb: float = Field(0.0005, ge=0.0, le=1.0, description="reference sample std of val_bpb over its seeds")
    reference_n: int = Field(3, ge=1, le=1000, description="number of seeds behind the reference mean")
    alpha: float = Field(0.01, gt=0.0, lt=0.5, description="significance level of the one-sided test")
    min_gain_nats: float = Field(0.005, ge=0.0, description="required improvement in nats/token (val_loss units) for a record claim")

    @field_validator("seeds")
    @classmethod
    def _unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be >= 0")
        return seeds
