"""quantize: checkpoint + Hessians -> integer tensors (data/quantize) and metrics/quantize.json.

With `quantize.target_bytes` (issue 19) the groups' bits and k are first fitted to the budget on
the rate-distortion frontier of `pgolf.quant.ratedistortion`: bytes_total = the model as the pack
params pack it + bytes_code of pack.code_modules (measured as the pack stage measures it), so the
stage then needs the pack params. A caller that counts other code (a submission's train_gpt.py,
pgolf.submission.entry) passes its bytes as `code_bytes`. The metrics carry the provenance
(pgolf.provenance: the quantize section, and pack when the fit read it); the timing sidecar
`quantize_time_s` and the ledger (pgolf.ledger: wall_seconds, phases {solve}: the fit and the
quantization).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pgolf.config.pack import PackParams
from pgolf.config.quantize import FitWeights, QuantizeParams
from pgolf.errors import ParamsError
from pgolf.io import atomic_dir, write_metrics
from pgolf.ledger import Phases
from pgolf.model.checkpoint import load_model, read_checkpoint_json
from pgolf.pack.code_bytes import measure_code_bytes
from pgolf.provenance import stage_provenance
from pgolf.quant.apply import QuantizedModel, quantize_state, summarize_report
from pgolf.quant.calibrate import load_hessians
from pgolf.quant.groups import GROUPS
from pgolf.quant.ratedistortion import FIT_TOLERANCE, HASH_SLACK, Packer, all_points, distortion, estimate_offset, fit_index, frontier, matrices, proxy
from pgolf.quant.store import save_quantized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeResult:
    method: str
    tensors_quantized: int
    tensors_passthrough: int
    quantize_time_s: float


@dataclass(frozen=True)
class Fit:
    params: QuantizeParams  # the chosen settings
    model: QuantizedModel
    target_bytes: int
    bytes_total: int  # predicted: packed model (the packer's tokenizer hash) + code
    distortion: dict[str, float]
    proxy: float
    frontier_points: int
    packs: int  # whole models quantized and packed


def fit_to_budget(packer: Packer, params: QuantizeParams, target: int, weights: FitWeights | None = None) -> Fit:
    """The frontier setting with the least proxy whose bytes_total fits `target` (see fit_index)."""
    weights = weights or params.fit_weights
    mats = matrices(packer.state, packer.hessians, params)
    front = frontier(all_points(mats, params, packer.pack), weights)
    try:
        i, total = fit_index([s.bytes for s in front], target, lambda j: packer(front[j].params(params))[1], estimate_offset(packer, mats, params))
    except ValueError as exc:
        raise ParamsError(f"quantize.target_bytes: {exc}") from None
    chosen = front[i].params(params)
    qm = packer(chosen)[0]
    d = distortion(qm.quantized, mats)
    if total < target * (1 - FIT_TOLERANCE):
        log.warning("fit: %d bytes, %.3f %% under the target %d: no setting searched lands closer", total, 100 * (target - total) / target, target)
    return Fit(chosen, qm, target, total, d, proxy(d, weights), len(front), len(packer.done))


def fit_metrics(fit: Fit, code_bytes: int, target: int) -> dict:
    """metrics/quantize.json's `fit`: the target, the predicted bytes, the chosen settings and proxy."""
    groups = sorted({qt.group for qt in fit.model.quantized.values()}, key=GROUPS.index)
    return {"target_bytes": target, "bytes_total_predicted": fit.bytes_total, "bytes_model_predicted": fit.bytes_total - code_bytes,
            "bytes_code": code_bytes, "under_target": target - fit.bytes_total, "within_tolerance": fit.bytes_total >= target * (1 - FIT_TOLERANCE),
            "settings": {g: {"bits": getattr(fit.params, g).bits, "k": getattr(fit.params, g).k} for g in groups},
            "proxy": fit.proxy, "distortion": fit.distortion, "frontier_points": fit.frontier_points, "packs": fit.packs}


def quantize_stage(params: QuantizeParams, checkpoint_dir: str | Path, calibrate_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
                   pack: PackParams | None = None, repo_root: str | Path = ".", code_bytes: int | None = None) -> QuantizeResult:
    """Quantize the trained weights with the Hessians of the calibrate stage (fitted to
    quantize.target_bytes when set: `pack` is then required, and the code counted is `code_bytes`,
    or when None pack.code_modules measured under `repo_root`)."""
    phases = Phases()
    if params.threads:
        torch.set_num_threads(params.threads)
    model_config = read_checkpoint_json(checkpoint_dir)["model_config"]
    state = load_model(checkpoint_dir).state_dict()
    hs = load_hessians(calibrate_dir)
    hessians = {name: hs.hessians[group] for name, group in hs.layers.items()}
    fit: dict = {}
    sections: dict = {"quantize": params}
    if params.target_bytes is None:
        with phases("solve"):
            qm = quantize_state(state, hessians, params, model_config)
    else:
        if pack is None:
            raise ParamsError("quantize.target_bytes: the stage needs the pack params (the packer's coders decide the bytes)")
        if params.fit_weights == FitWeights():
            log.warning("quantize.fit_weights are uncalibrated (1 each): `pgolf rd` fits them to real quantization gaps")
        sections["pack"] = pack
        code = measure_code_bytes(pack.code_modules, repo_root).bytes_code if code_bytes is None else code_bytes
        with phases("solve"):
            found = fit_to_budget(Packer(state, hessians, model_config, pack, code), params, params.target_bytes - HASH_SLACK)
        qm, fit = found.model, fit_metrics(found, code, params.target_bytes)
        log.info("fit: bytes_total %d (target %d) settings %s", found.bytes_total, params.target_bytes, fit["settings"])
    with atomic_dir(out_dir) as tmp:
        save_quantized(qm, tmp)
    result = QuantizeResult(params.method, len(qm.quantized), len(qm.passthrough), phases.clock() - phases.started)
    metrics = {k: v for k, v in result.__dict__.items() if k != "quantize_time_s"} | ({"fit": fit} if fit else {})
    metrics |= {"groups": summarize_report(qm.report), "tensors": qm.report}
    device = next(iter(state.values())).device if state else torch.device("cpu")
    write_metrics(metrics_path, metrics, {"quantize_time_s": result.quantize_time_s, **phases.ledger()}, stage_provenance(sections, None, device))
    log.info("method: %s tensors_quantized: %d quantize_time_s: %.1f", params.method, result.tensors_quantized, result.quantize_time_s)
    return result
