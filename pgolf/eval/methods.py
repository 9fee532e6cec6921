"""The registry of evaluation methods: one entry per name, driving dispatch, the `pgolf eval`
CLI, params validation, the DVC stages `eval_<name>`, aggregate and report.

A method gives its params model and one function `evaluate(model, stream, params)` returning a
`MethodOutcome`: the reported result, extra metrics, and the bpb its quantization gap is measured
on; `gap_score` scores the float checkpoint the same way. Adding a method is one module with its
`evaluate` plus its params section and one entry here (the stage is dvc.yaml's `eval` foreach).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pgolf.config.base import Section
from pgolf.config.eval import EvalPlainParams, EvalSlidingParams, EvalTTTParams
from pgolf.eval.bpb import EvalResult, ValStream
from pgolf.eval.legality import LegalityError, check_legality
from pgolf.eval.plain import evaluate_plain
from pgolf.eval.sliding import evaluate_sliding
from pgolf.eval.ttt import TTTRunner, make_adapter, run_ttt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodOutcome:
    result: EvalResult  # the method's val_bpb, val_loss, scored tokens and bytes
    gap_bpb: float  # the bpb that the quantization gap compares with the checkpoint's
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific metrics


@dataclass(frozen=True)
class EvalMethod:
    params: type[Section]
    evaluate: Callable[[nn.Module, ValStream, Any], MethodOutcome]
    gap_score: Callable[[nn.Module, ValStream, Any], float]
    stage: bool  # a DVC stage `eval_<name>` with a params section of that name
    description: str
    gap_metric: str = "val_bpb"  # the metrics key holding `MethodOutcome.gap_bpb` (report rows)
    gap_label: str = ""  # how report rows name that score when it is not val_bpb


def _plain(model: nn.Module, stream: ValStream, params: EvalPlainParams) -> MethodOutcome:
    result = evaluate_plain(model, stream, params)[0]
    return MethodOutcome(result, result.val_bpb)


def _sliding(model: nn.Module, stream: ValStream, params: EvalSlidingParams) -> MethodOutcome:
    result = evaluate_sliding(model, stream, params)[0]
    return MethodOutcome(result, result.val_bpb)


def ttt_legality(model: nn.Module, stream: ValStream, params: EvalTTTParams) -> dict[str, Any]:
    """C1-C4 on the first params.legality_tokens tokens; LegalityError names every failed check."""
    vocab = model.config.vocab_size if hasattr(model, "config") else int(stream.tokens.max()) + 1
    report = check_legality(
        lambda s: TTTRunner(make_adapter(model, params), s, params).run(),
        stream.prefix(params.legality_tokens),
        vocab,
        params.legality_cuts,
        params.seed,
    )
    if not report.passed:
        raise LegalityError(f"TTT legality check failed: {', '.join(report.failures())} ({report.to_dict()})")
    return report.to_dict()


def _ttt(model: nn.Module, stream: ValStream, params: EvalTTTParams) -> MethodOutcome:
    """Legality check first (fails fast), then the frozen chunked scoring and score-first TTT."""
    legality = ttt_legality(model, stream, params)
    frozen = run_ttt(model, stream, params, adapt=False).result
    log.info("val_bpb_no_ttt: %.6f", frozen.val_bpb)
    adapted = run_ttt(model, stream, params).result
    extra = {
        "val_bpb_no_ttt": frozen.val_bpb,
        "val_loss_no_ttt": frozen.val_loss,
        "ttt_gain_bpb": frozen.val_bpb - adapted.val_bpb,
        "legality": legality,
    }
    return MethodOutcome(adapted, frozen.val_bpb, extra)


METHODS: dict[str, EvalMethod] = {
    "plain": EvalMethod(EvalPlainParams, _plain, lambda m, s, p: _plain(m, s, p).result.val_bpb, False,
                        "non-overlapping windows of seq_len"),
    "sliding": EvalMethod(EvalSlidingParams, _sliding, lambda m, s, p: _sliding(m, s, p).result.val_bpb, True,
                          "windows of `window` tokens every `stride`; each later window scores its last `stride`"),
    "ttt": EvalMethod(EvalTTTParams, _ttt, lambda m, s, p: run_ttt(m, s, p, adapt=False).result.val_bpb, True,
                      "score-first test-time training, with the legality check C1-C4", "val_bpb_no_ttt", "no TTT"),
}


def report_rows(metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The val_bpb rows of the report: per stage method (metrics/eval_<name>.json as `metrics[name]`),
    the checkpoint and the artifact on the score the gap compares, then the method's val_bpb."""
    rows = []
    for name in stage_methods():
        method, m = METHODS[name], metrics[name]
        suffix = f", {method.gap_label}" if method.gap_label else ""
        rows.append({"method": f"{name}: checkpoint{suffix}", "val_bpb": m[method.gap_metric] - m["quantization_gap"]})
        if method.gap_metric != "val_bpb":
            rows.append({"method": f"{name}: artifact{suffix}", "val_bpb": m[method.gap_metric]})
        rows.append({"method": f"{name}: artifact", "val_bpb": m["val_bpb"]})
    return rows


def stage_methods() -> list[str]:
    """Names of the methods that are DVC stages (`eval_<name>`, metrics/eval_<name>.json)."""
    return [name for name, method in METHODS.items() if method.stage]
