"""The body of every evaluation stage `eval_<method>`: score the packed artifact (dequantized) by
one method of the registry, score the float checkpoint the same way for the quantization gap,
write metrics/eval_<method>.json, its provenance (pgolf.provenance) and its timing ledger
(pgolf.ledger: precompute, scoring, gap).

Every evaluation scores the model rebuilt from the artifact, never the training checkpoint; the
checkpoint is only evaluated to report `quantization_gap` (artifact - checkpoint).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pgolf.eval.methods import METHODS
from pgolf.io import write_metrics
from pgolf.ledger import Phases
from pgolf.model.checkpoint import load_model
from pgolf.provenance import data_fingerprint, shard_files, stage_provenance
from pgolf.runtime import default_device, evaluate_artifact, load_artifact_model, load_val_stream

log = logging.getLogger(__name__)


def eval_stage(method: str, params: Any, artifact: str | Path, shards: str | Path, tokenizer: str | Path,
               checkpoint: str | Path | None, metrics_path: str | Path) -> dict[str, Any]:
    """Metrics of one method on the artifact (the method's result, its extras, quantization_gap)."""
    phases = Phases()
    with phases("precompute"):
        stream = load_val_stream(shards, tokenizer)
        model = load_artifact_model(artifact, tokenizer)
    with phases("scoring"):
        outcome = evaluate_artifact(method, model, stream, params)
    gap = None
    if checkpoint is not None:
        with phases("gap"):
            checkpoint_bpb = METHODS[method].gap_score(load_model(checkpoint).to(default_device()).eval(), stream, params)
        log.info("checkpoint_val_bpb: %.6f", checkpoint_bpb)
        gap = outcome.gap_bpb - checkpoint_bpb
    result = outcome.result.to_dict()
    timing = {"seconds": result.pop("seconds")}  # changes run to run: kept apart from the metrics
    metrics: dict[str, Any] = {**result, "quantization_gap": gap, **outcome.extra}
    for key, value in {**metrics, **timing}.items():
        if key != "legality":
            log.info("%s: %s", key, value)
    data = data_fingerprint(shard_files(shards, ("val",)), tokenizer=tokenizer)
    provenance = stage_provenance({f"eval_{method}": params}, data, default_device())
    write_metrics(metrics_path, metrics, {**timing, **phases.ledger()}, provenance)
    return metrics
