"""Params section `rd`: the rate-distortion curve of the trained checkpoint (stage `rd`, issue 19).

One line per quantization method (`pgolf.quant.ratedistortion.RD_METHODS`): settings on the
method's (bytes, proxy) frontier spread over a bytes range around the configured quantization,
each packed exactly; `evaluate` of them per line scored for real by sliding-window evaluation.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from pgolf.config.base import Section, known_name


class RDParams(Section):
    """`rd`: which lines the rate-distortion curve has, how many points, how many scored for real."""

    methods: list[str] = Field(["gptq", "rtn"], description="lines of the curve ([] = none: the stage writes an empty curve), names of pgolf.quant.ratedistortion.RD_METHODS: gptq | gptq, head Hessian | gptq, clip_search | rtn | gptq, LQER r4 top3")
    points: int = Field(5, ge=1, le=64, description="settings per line, spread geometrically over the bytes range")
    span_lo: float = Field(0.6, gt=0.0, le=10.0, description="low end of the bytes range, in multiples of the configured quantization's bytes_total")
    span_hi: float = Field(1.6, gt=0.0, le=10.0, description="high end of the bytes range, in the same multiples")
    evaluate: int = Field(2, ge=0, le=64, description="points per line scored for real (sliding window, eval_sliding params): both ends, then evenly between; the rest carry the proxy's prediction")
    eval_tokens: int = Field(0, ge=0, description="real scores on the first N validation tokens (0 = the whole stream); the checkpoint is scored on the same tokens")
    calibrate: bool = Field(False, description="true: fit the proxy's weights to real gaps of the configured setting and its one-bit neighbours (7-9 extra evaluations); false: use quantize.fit_weights")
    fit_bits: list[int] = Field([4, 5, 6, 7, 8], min_length=1, description="bit widths of each group's grid")
    fit_k_steps: int = Field(6, ge=1, le=256, description="k values per group and width, geometric over quantize.fit_k_min..fit_k_max (the curve needs fewer than the fit to a budget)")
    threads: int = Field(1, ge=0, le=256, description="torch threads (GPTQ on small matrices is fastest on 1); 0 = torch's default")

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        from pgolf.quant.ratedistortion import RD_METHODS

        for name in value:
            known_name(name, RD_METHODS)
        if len(set(value)) != len(value):
            raise ValueError("each method at most once")
        return value

    @field_validator("fit_bits")
    @classmethod
    def _bits(cls, value: list[int]) -> list[int]:
        if any(not 2 <= b <= 8 for b in value):
            raise ValueError("bit widths must be within 2..8")
        return sorted(set(value))

    @model_validator(mode="after")
    def _span(self) -> RDParams:
        if self.span_lo >= self.span_hi:
            raise ValueError(f"span_lo ({self.span_lo}) must be < span_hi ({self.span_hi})")
        return self
