"""The registry of evaluation methods: one entry per name, driving dispatch, the `pgolf eval`
CLI, params validation, the DVC stages `eval_<name>`, aggregate and report.

A method gives its params model and one function `evaluate(model, stream, params)` returning a
`MethodOutcome`: the reported result, extra metrics, and the bpb its quantization gap is measured
on; `gap_score` scores the float checkpoint the same way. Adding a method is one module with its
`evaluate` plus its params section and one entry here (the stage is dvc.yaml's `eval` foreach).
Every method runs the legality check C1-C4 (`pgolf.eval.legality`) on a prefix before its real
run and C3/C4 over its real run; a failure raises LegalityError, and the report is `extra["legality"]`.
A method that splits over ranks (`ranked`) also takes a `pgolf.dist.DistInfo`: each rank scores its
share, every rank returns the merged outcome. `MethodOutcome.phases` times the parts of a method's
call that are not its timed scoring pass (pgolf.eval.run's timing ledger).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from pgolf.config.base import Section
from pgolf.config.eval import EvalPlainParams, EvalSlidingParams, EvalTiltParams, EvalTTTParams
from pgolf.dist import DistInfo
from pgolf.eval.accel import WindowForward, summed, timed
from pgolf.eval.bpb import EvalResult, ValStream
from pgolf.eval.legality import (LegalityReport, ProbeRun, ScoreLog, check_legality, require_legal, sample_positions,
                                 with_full_stream)
from pgolf.eval.plain import evaluate_plain, plain_forward, plain_windows
from pgolf.eval.sliding import evaluate_sliding, sliding_forward, sliding_windows
from pgolf.eval.tilt import evaluate_tilt, tilt_probe
from pgolf.eval.ttt import TTTRunner, make_adapter, run_ttt, ttt_document_chunks
from pgolf.eval.ttt_order import documents, evaluation_order, rearranged
from pgolf.eval.windows import Window, evaluate_windows, run_windows

log = logging.getLogger(__name__)

LEGALITY_SEED = 0  # perturbations and probe ids of the window methods' legality check (TTT uses its own seed)


@dataclass(frozen=True)
class MethodOutcome:
    result: EvalResult  # the method's val_bpb, val_loss, scored tokens and bytes
    gap_bpb: float  # the bpb that the quantization gap compares with the checkpoint's
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific metrics
    # seconds of the call's parts other than its timed scoring pass: "legality" (the probe, less its
    # compilation), "compile_warmup" (first compiled calls), "precompute" (the method's own, e.g. hints)
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalMethod:
    params: type[Section]
    evaluate: Callable[[nn.Module, ValStream, Any], MethodOutcome]
    gap_score: Callable[[nn.Module, ValStream, Any], float]
    stage: bool  # a DVC stage `eval_<name>` with a params section of that name
    description: str
    gap_metric: str = "val_bpb"  # the metrics key holding `MethodOutcome.gap_bpb` (report rows)
    gap_label: str = ""  # how report rows name that score when it is not val_bpb
    ranked: bool = False  # evaluate and gap_score take a DistInfo as 4th argument: each rank scores a share


def vocab_of(model: nn.Module, stream: ValStream) -> int:
    return model.config.vocab_size if hasattr(model, "config") else int(stream.tokens.max()) + 1


def spans_of(windows: list[Window]) -> list[tuple[int, int]]:
    """The scored targets (first, last) of each window or chunk: where the legality check places its cuts."""
    return [(w.score_from, w.stop) for w in windows]


def window_probe(model: nn.Module, windows_of: Callable[[ValStream], list[Window]], batch_size: int, samples: int,
                 vocab_size: int, seed: int = LEGALITY_SEED, forward: WindowForward | None = None) -> Callable[[ValStream], ProbeRun]:
    """The legality check's run of a window method: log p of a seeded random id at every position (C1's
    fingerprint of the distribution at t), softmaxes materialized at sampled positions (C2), counts (C4)."""

    def run(stream: ValStream) -> ProbeRun:
        rng = np.random.default_rng(seed)  # the same probe ids in every run
        probe = rng.integers(0, vocab_size, size=(stream.num_tokens, 1))
        score_log = ScoreLog(stream.num_tokens, sample_positions(stream.num_tokens, samples, rng))
        scores = run_windows(model, stream, windows_of(stream), batch_size, probe, score_log, forward)
        return score_log.probe_run(scores.nll, 0, scores.gathered[:, 0])

    return run


def windows_legality(model: nn.Module, stream: ValStream, params: EvalPlainParams | EvalSlidingParams,
                     windows_of: Callable[[ValStream], list[Window]], name: str,
                     forward: WindowForward | None = None) -> LegalityReport:
    """C1-C4 of a window method on the first params.legality_tokens tokens; LegalityError when one fails.
    Under ranks every rank runs it whole (a small prefix): all ranks pass or fail together."""
    prefix = stream.prefix(params.legality_tokens)
    run = window_probe(model, windows_of, params.batch_size, params.legality_samples, vocab_of(model, stream), LEGALITY_SEED, forward)
    report = check_legality(run, prefix, vocab_of(model, stream), params.legality_cuts, LEGALITY_SEED, name, spans_of(windows_of(prefix)))
    require_legal(report)
    return report


def _windows_method(model: nn.Module, stream: ValStream, params: EvalPlainParams | EvalSlidingParams,
                    windows_of: Callable[[ValStream], list[Window]], name: str, forward: WindowForward,
                    info: DistInfo | None) -> MethodOutcome:
    """Legality check first (fails fast), then the real run (this rank's share), whose scored positions
    are counted over all ranks (full-stream C4). One forward (compiled once) serves both."""
    phases: dict[str, float] = {}
    with timed(phases, "legality", forward):
        report = windows_legality(model, stream, params, windows_of, name, forward)
    windows = windows_of(stream)
    log.info("%s windows: %d", name, len(windows))
    counter = ScoreLog(stream.num_tokens, np.zeros(0, dtype=np.int64))
    with timed(phases, "scoring", forward):
        result = evaluate_windows(model, stream, windows, params.batch_size, counter, forward, info)[0]
    legality = require_legal(with_full_stream(report, stream, summed(counter.counts, info), 0))
    del phases["scoring"]  # the rest of the call: what the stage times as scoring
    return MethodOutcome(result, result.val_bpb, {"legality": legality}, phases)


def _plain(model: nn.Module, stream: ValStream, params: EvalPlainParams, info: DistInfo | None = None) -> MethodOutcome:
    return _windows_method(model, stream, params, lambda s: plain_windows(s, params.seq_len), "plain",
                           plain_forward(model, params), info)


def _sliding(model: nn.Module, stream: ValStream, params: EvalSlidingParams, info: DistInfo | None = None) -> MethodOutcome:
    return _windows_method(model, stream, params, lambda s: sliding_windows(s, params.window, params.stride, params.doc_bounded),
                           "sliding", sliding_forward(model, params), info)


def ttt_probe(model: nn.Module, params: EvalTTTParams, runner: type[TTTRunner] = TTTRunner) -> Callable[[ValStream], ProbeRun]:
    """The legality check's run of TTT: its ledger (every scored distribution's mass, updates before scores, counts)."""

    def run(stream: ValStream) -> ProbeRun:
        out = runner(make_adapter(model, params), stream, params).run()
        counts = out.ledger.score_counts
        return ProbeRun(out.nll, counts, int(counts.sum()), out.ledger.max_abs_log_mass, 0.0, out.ledger.early_training_tokens)

    return run


def in_evaluation_order(run: Callable[[ValStream], ProbeRun], source: np.ndarray) -> Callable[[ValStream], ProbeRun]:
    """A probe of a stream laid out in evaluation order (`rearranged`'s `source`): puts the tokens
    back into stream order, runs there, and lays the scores out in evaluation order again, so that
    the check's "positions before t" are those scored earlier in evaluation order."""

    def run_ordered(ordered: ValStream) -> ProbeRun:
        tokens, target_bytes = np.empty_like(ordered.tokens), np.empty_like(ordered.target_bytes)
        tokens[source], target_bytes[source] = ordered.tokens, ordered.target_bytes
        out = run(ValStream(tokens, target_bytes, ordered.bos_id))
        return replace(out, nll=out.nll[source], score_counts=out.score_counts[source])

    return run_ordered


def probe_params(params: EvalTTTParams, num_docs: int) -> EvalTTTParams:
    """The params the legality probe runs: with global phases or a warm A, lanes and the phase are
    scaled to the prefix's `num_docs` documents so that the probe crosses lane reuse and a phase
    boundary (the real run's 2,000 documents would never be reached in a few thousand tokens)."""
    if params.global_phase_docs == 0 and not params.warm_start_a:
        return params
    batch = min(params.batch_docs, max(2, num_docs // 4))
    phase = min(params.global_phase_docs, max(params.global_phases, num_docs // 2)) if params.global_phase_docs else 0
    return params.model_copy(update={"batch_docs": batch, "global_phase_docs": phase})


def ttt_chunks(stream: ValStream, params: EvalTTTParams) -> list[Window]:
    return [w for b, e in documents(stream) for w in ttt_document_chunks(b, e, params)]


@dataclass(frozen=True)
class TTTProbePlan:
    """What the TTT legality check runs: the probe's params, the stream it perturbs (laid out in
    evaluation order), `source` mapping that layout to stream order (None: the same), the chunk spans there."""

    params: EvalTTTParams
    stream: ValStream
    source: np.ndarray | None
    spans: list[tuple[int, int]]

    def wrap(self, run: Callable[[ValStream], ProbeRun]) -> Callable[[ValStream], ProbeRun]:
        return run if self.source is None else in_evaluation_order(run, self.source)


def ttt_probe_plan(stream: ValStream, params: EvalTTTParams) -> TTTProbePlan:
    """The first legality_tokens tokens; when evaluation order is not stream order, cut after their last
    BOS and rearranged into evaluation order, so that check C1's "before t" means "scored earlier"."""
    prefix = stream.prefix(params.legality_tokens)
    params = probe_params(params, len(documents(prefix)))
    order = evaluation_order(prefix, params)
    if np.array_equal(order, np.arange(order.size)):
        return TTTProbePlan(params, prefix, None, spans_of(ttt_chunks(prefix, params)))
    last_bos = int(prefix.doc_starts()[-1])
    if last_bos > 0:
        prefix = prefix.prefix(last_bos + 1)
    ordered, source = rearranged(prefix, evaluation_order(prefix, params))
    where = np.argsort(source)  # stream position -> its position in evaluation order
    spans = [(int(where[a]), int(where[b])) for a, b in spans_of(ttt_chunks(prefix, params))]
    return TTTProbePlan(params, ordered, source, spans)


def ttt_legality(model: nn.Module, stream: ValStream, params: EvalTTTParams) -> LegalityReport:
    """C1-C4 on the probe plan (`ttt_probe_plan`), cuts inside chunks; LegalityError names every failed check."""
    plan = ttt_probe_plan(stream, params)
    report = check_legality(plan.wrap(ttt_probe(model, plan.params)), plan.stream, vocab_of(model, stream),
                            plan.params.legality_cuts, plan.params.seed, "ttt", plan.spans)
    require_legal(report)
    return report


def _ttt(model: nn.Module, stream: ValStream, params: EvalTTTParams, info: DistInfo | None = None) -> MethodOutcome:
    """Legality check first (fails fast; every rank runs it whole), then the frozen chunked scoring and
    score-first TTT (this rank's share of the batches, merged). Phases: legality, no_ttt, global_phases."""
    phases: dict[str, float] = {}
    with timed(phases, "legality"):
        report = ttt_legality(model, stream, params)
    with timed(phases, "no_ttt"):
        frozen = run_ttt(model, stream, params, adapt=False, info=info).result
    log.info("val_bpb_no_ttt: %.6f", frozen.val_bpb)
    adapted = run_ttt(model, stream, params, info=info)
    phases["global_phases"] = float(sum(adapted.global_phase_seconds))
    ledger = adapted.ledger
    extra = {
        "val_bpb_no_ttt": frozen.val_bpb,
        "val_loss_no_ttt": frozen.val_loss,
        "ttt_gain_bpb": frozen.val_bpb - adapted.result.val_bpb,
        "ttt_padding_fraction": adapted.padding_fraction,
        "ttt_rounds": adapted.rounds,
        "ttt_global_phases": len(adapted.global_phase_seconds),  # their seconds: the timing ledger (phases)
        "legality": require_legal(with_full_stream(report, stream, ledger.score_counts, ledger.early_training_tokens)),
    }
    return MethodOutcome(adapted.result, frozen.val_bpb, extra, phases)


def _tilt(model: nn.Module, stream: ValStream, params: EvalTiltParams, info: DistInfo | None = None) -> MethodOutcome:
    """Legality check first (fails fast; every rank runs it whole), then one pass: n-gram hints (whole
    stream, every rank), sliding scores (this rank's share, merged), the tilt; the no-tilt baseline
    comes from the same forward pass."""
    prefix = stream.prefix(params.legality_tokens)
    forward = sliding_forward(model, params)
    phases: dict[str, float] = {}
    with timed(phases, "legality", forward):
        run = tilt_probe(model, params, vocab_of(model, stream), LEGALITY_SEED, forward=forward)
        windows = sliding_windows(prefix, params.window, params.stride, params.doc_bounded)
        report = check_legality(run, prefix, vocab_of(model, stream), params.legality_cuts, LEGALITY_SEED, "tilt", spans_of(windows))
        require_legal(report)
    with timed(phases, "scoring", forward):
        out = evaluate_tilt(model, stream, params, info, forward)
    del phases["scoring"]
    phases["precompute"] = out.hint_seconds
    extra = {
        "val_bpb_no_tilt": out.sliding.val_bpb,
        "val_loss_no_tilt": out.sliding.val_loss,
        "tilt_gain_bpb": out.sliding.val_bpb - out.result.val_bpb,
        "tilt_hints": out.hints,
        "tilt_hits": out.hits,
        "legality": require_legal(with_full_stream(report, stream, out.score_counts, out.early_count_updates)),
    }
    return MethodOutcome(out.result, out.result.val_bpb, extra, phases)


METHODS: dict[str, EvalMethod] = {
    "plain": EvalMethod(EvalPlainParams, _plain, lambda m, s, p, info=None: evaluate_plain(m, s, p, info)[0].val_bpb, False,
                        "non-overlapping windows of seq_len", ranked=True),
    "sliding": EvalMethod(EvalSlidingParams, _sliding, lambda m, s, p, info=None: evaluate_sliding(m, s, p, info)[0].val_bpb, True,
                          "windows of `window` tokens every `stride`; each later window scores its last `stride`", ranked=True),
    "ttt": EvalMethod(EvalTTTParams, _ttt, lambda m, s, p, info=None: run_ttt(m, s, p, adapt=False, info=info).result.val_bpb, True,
                      "score-first test-time training", "val_bpb_no_ttt", "no TTT", ranked=True),
    "tilt": EvalMethod(EvalTiltParams, _tilt, lambda m, s, p, info=None: evaluate_tilt(m, s, p, info).result.val_bpb, True,
                       "sliding windows tilted towards a causal n-gram hint (closed-form renormalized)", ranked=True),
}


def report_rows(metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The val_bpb rows of the report: per stage method (metrics/eval_<name>.json as `metrics[name]`),
    the checkpoint and the artifact on the score the gap compares, then the method's val_bpb."""
    rows = []
    for name in stage_methods():
        method, m = METHODS[name], metrics[name]
        suffix = f", {method.gap_label}" if method.gap_label else ""
        if m.get("quantization_gap") is not None:  # null: the stage ran with gap: off, or without a checkpoint
            rows.append({"method": f"{name}: checkpoint{suffix}", "val_bpb": m[method.gap_metric] - m["quantization_gap"]})
        if method.gap_metric != "val_bpb":
            rows.append({"method": f"{name}: artifact{suffix}", "val_bpb": m[method.gap_metric]})
        rows.append({"method": f"{name}: artifact", "val_bpb": m["val_bpb"]})
    return rows


def stage_methods() -> list[str]:
    """Names of the methods that are DVC stages (`eval_<name>`, metrics/eval_<name>.json)."""
    return [name for name, method in METHODS.items() if method.stage]
