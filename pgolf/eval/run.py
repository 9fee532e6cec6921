"""The body of every evaluation stage `eval_<method>`: score the packed artifact (dequantized) by
one method of the registry, score the float checkpoint the same way for the quantization gap
(unless `gap: off`), write metrics/eval_<method>.json, its provenance (pgolf.provenance) and its
timing ledger (pgolf.ledger.Phases).

Every evaluation scores the model rebuilt from the artifact, never the training checkpoint; the
checkpoint is only evaluated to report `quantization_gap` (artifact - checkpoint).

With nproc > 1 the stage runs in nproc torchrun workers (`run_eval_stage`, as the train stage):
each scores a disjoint share of the method's windows (methods that are `ranked`), the scores are
merged exactly, and rank 0 alone writes the outputs.

Timing phases (disjoint, seconds): precompute (validation stream, artifact decoded, and a method's
own precomputation such as the tilt's hints), compile_warmup (the first compiled call at each
shape), legality (the probe on a prefix), scoring (the rest of the method's call), global_phases
(TTT's global SGD phases, when the method reports them: carved out of scoring), gap (the checkpoint
rescored). `counted_seconds` is what the rules count: precompute + compile_warmup + scoring +
global_phases, not the legality probe, the no-TTT pass or the gap.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pgolf.dist import DistInfo, init_dist, launched_by_torchrun, shutdown
from pgolf.launch import run_torchrun, worker_stops_quietly
from pgolf.eval.accel import precision_context
from pgolf.eval.methods import METHODS, MethodOutcome
from pgolf.io import write_metrics
from pgolf.ledger import Phases
from pgolf.model.checkpoint import load_model
from pgolf.provenance import data_fingerprint, shard_files, stage_provenance
from pgolf.runtime import default_device, evaluate_artifact, load_artifact_model, load_val_stream

log = logging.getLogger(__name__)

COUNTED_PHASES = ("precompute", "compile_warmup", "scoring", "global_phases")  # CHALLENGE.md: the evaluation's 600 s


def method_phases(outcome: MethodOutcome, method_seconds: float) -> dict[str, float]:
    """The phases of the method's call: its reported parts, TTT's global phases (`global_phase_seconds`
    of the outcome, when it has them), and scoring = the rest."""
    parts = dict(outcome.phases)
    global_phases = getattr(outcome, "global_phase_seconds", None)
    if global_phases:
        parts["global_phases"] = parts.get("global_phases", 0.0) + float(sum(global_phases))
    return {**parts, "scoring": method_seconds - sum(parts.values())}


def counted_seconds(phases: dict[str, float]) -> float:
    return sum(phases.get(name, 0.0) for name in COUNTED_PHASES)


def eval_stage(method: str, params: Any, artifact: str | Path, shards: str | Path, tokenizer: str | Path,
               checkpoint: str | Path | None, metrics_path: str | Path, info: DistInfo | None = None) -> dict[str, Any]:
    """Metrics of one method on the artifact (the method's result, its extras, quantization_gap).
    Under ranks (`info`) every rank scores its share and returns the metrics; rank 0 writes them."""
    device = info.device if info is not None else default_device()
    phases = Phases()
    with phases("precompute"):
        stream = load_val_stream(shards, tokenizer)
        model = load_artifact_model(artifact, tokenizer, device)
    started = phases.clock()
    outcome = evaluate_artifact(method, model, stream, params, info)
    for name, seconds in method_phases(outcome, phases.clock() - started).items():
        phases.add(name, seconds)
    gap = None
    if checkpoint is not None and params.gap == "rescore":
        with phases("gap"), precision_context(params.precision, device):
            scored = load_model(checkpoint).to(device).eval()
            checkpoint_bpb = METHODS[method].gap_score(scored, stream, params, *([info] if info is not None and info.distributed else []))
        log.info("checkpoint_val_bpb: %.6f", checkpoint_bpb)
        gap = outcome.gap_bpb - checkpoint_bpb
    result = outcome.result.to_dict()
    timing = {"seconds": result.pop("seconds"), "counted_seconds": counted_seconds(phases.seconds)}  # run to run: apart from the metrics
    metrics: dict[str, Any] = {**result, "quantization_gap": gap, **outcome.extra}
    for key, value in {**metrics, **timing}.items():
        if key != "legality":
            log.info("%s: %s", key, value)
    if info is None or info.is_main:
        data = data_fingerprint(shard_files(shards, ("val",)), tokenizer=tokenizer)
        provenance = stage_provenance({f"eval_{method}": params}, data, device, info.world_size if info is not None else 1)
        write_metrics(metrics_path, metrics, {**timing, **phases.ledger()}, provenance)
    return metrics


def run_eval_stage(method: str, params: Any, artifact: str | Path, shards: str | Path, tokenizer: str | Path,
                   checkpoint: str | Path | None, metrics_path: str | Path, argv: list[str]) -> None:
    """The stage script's body: with params.nproc > 1 (not yet under torchrun) run `argv` (the script
    and its arguments) in nproc torchrun workers and wait; else evaluate here, as one rank of them
    when under torchrun."""
    if params.nproc > 1 and not launched_by_torchrun():
        run_torchrun(params.nproc, argv)
        return
    info = init_dist("auto")
    if not info.is_main:
        logging.getLogger("pgolf").setLevel(logging.WARNING)
    try:
        if launched_by_torchrun():
            with worker_stops_quietly():
                eval_stage(method, params, artifact, shards, tokenizer, checkpoint, metrics_path, info)
        else:
            eval_stage(method, params, artifact, shards, tokenizer, checkpoint, metrics_path, info)
    finally:
        shutdown(info)
