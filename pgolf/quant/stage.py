"""quantize: checkpoint + Hessians -> integer tensors (data/quantize) and metrics/quantize.json."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pgolf.config.quantize import QuantizeParams
from pgolf.io import atomic_dir, write_metrics
from pgolf.model.checkpoint import load_model, read_checkpoint_json
from pgolf.quant.apply import quantize_state, summarize_report
from pgolf.quant.calibrate import load_hessians
from pgolf.quant.store import save_quantized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeResult:
    method: str
    tensors_quantized: int
    tensors_passthrough: int
    quantize_time_s: float


def quantize_stage(params: QuantizeParams, checkpoint_dir: str | Path, calibrate_dir: str | Path, out_dir: str | Path, metrics_path: str | Path) -> QuantizeResult:
    """Quantize the trained weights with the Hessians of the calibrate stage."""
    started = time.perf_counter()
    model_config = read_checkpoint_json(checkpoint_dir)["model_config"]
    state = load_model(checkpoint_dir).state_dict()
    hs = load_hessians(calibrate_dir)
    hessians = {name: hs.hessians[group] for name, group in hs.layers.items()}
    qm = quantize_state(state, hessians, params, model_config)
    with atomic_dir(out_dir) as tmp:
        save_quantized(qm, tmp)
    result = QuantizeResult(params.method, len(qm.quantized), len(qm.passthrough), time.perf_counter() - started)
    metrics = {k: v for k, v in result.__dict__.items() if k != "quantize_time_s"} | {"groups": summarize_report(qm.report), "tensors": qm.report}
    write_metrics(metrics_path, metrics, {"quantize_time_s": result.quantize_time_s})
    log.info("method: %s tensors_quantized: %d quantize_time_s: %.1f", params.method, result.tensors_quantized, result.quantize_time_s)
    return result
