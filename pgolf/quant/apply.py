"""Quantize a model's state dict, tensor by tensor, as the `quantize` params say.

Pure with respect to files: in-memory tensors and Hessians in, a `QuantizedModel` out, with a
per-tensor report (relative reconstruction error, relative output error on the calibration
inputs, also for round-to-nearest so GPTQ's gain is visible).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch

from pgolf.config.quantize import GroupQuant, QuantizeParams
from pgolf.quant.gptq import relative_output_error, relative_reconstruction_error
from pgolf.quant.groups import is_quantizable, tensor_group, unique_tensors
from pgolf.quant.lowrank_fit import fit_lowrank, top_by_residual
from pgolf.quant.methods import QUANTIZERS, SCALE_RULES
from pgolf.model.ternary import expand_scales
from pgolf.quant.rtn import as_fp16_scale, levels_for, qmax_for_bits, rtn
from pgolf.quant.salient_fit import choose_blocks, column_saliency, multipliers, split
from pgolf.quant.scheme import STORAGE_DTYPES, QuantizedTensor

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class QuantizedModel:
    """Everything the artifact holds: model config, integer tensors, float passthroughs, ties."""

    model_config: dict
    quantized: dict[str, QuantizedTensor]
    passthrough: dict[str, torch.Tensor]
    dtypes: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)
    report: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Dequantized tensors under every name, aliases included, in their original dtypes."""
        state = {name: qt.dequantize() for name, qt in self.quantized.items()}
        for name, tensor in self.passthrough.items():
            floating = tensor.is_floating_point()
            state[name] = tensor.to(STORAGE_DTYPES.get(self.dtypes.get(name, "float32"), torch.float32)) if floating else tensor
        for alias, target in self.aliases.items():
            state[alias] = state[target]
        return state


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quantize_matrix(w: torch.Tensor, h: torch.Tensor | None, params: QuantizeParams, bits: int, k: float,
                    mult: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(q int8, scale [rows, 1], method used). A quantizer that needs H falls back to RTN without one."""
    maxq = qmax_for_bits(bits)
    scale = SCALE_RULES[params.scale](w, params, k, maxq, h)
    method = params.method
    if QUANTIZERS[method].needs_hessian and h is None:
        method = "rtn"
    return QUANTIZERS[method].quantize(w, h, scale, maxq, params, mult), scale, method


def salient_blocks(w: torch.Tensor, h: torch.Tensor | None, params: QuantizeParams, spec: GroupQuant) -> tuple[torch.Tensor, int] | None:
    """(first columns, shift) of the matrix's salient blocks, or None: off for its group, no
    Hessian, a group already at salient_bits, or fewer columns than one block."""
    shift = params.salient_bits - spec.bits
    if not spec.salient or h is None or shift <= 0:
        return None
    starts = choose_blocks(column_saliency(w, h), spec.salient, params.salient_top)
    return (starts, shift) if starts.numel() else None


def group_scales(w: torch.Tensor, h: torch.Tensor | None, params: QuantizeParams, spec: GroupQuant) -> torch.Tensor:
    """[rows, groups] scales of the group's scale rule on each run of spec.scale_group columns
    (one run per row when 0), reaching the grid's span; positive float16 values."""
    levels = levels_for(spec.grid, spec.bits)
    size = spec.scale_group or w.shape[1]
    runs = [(j, min(j + size, w.shape[1])) for j in range(0, w.shape[1], size)]
    rule = SCALE_RULES[params.scale]
    scale = torch.cat([rule(w[:, a:b], params, spec.k, levels.hi + levels.offset, None if h is None else h[a:b, a:b], levels) for a, b in runs], dim=1)
    return as_fp16_scale(torch.nan_to_num(scale, nan=0.0))  # a 1-column run has no std: smallest scale


def quantize_on_grid(w: torch.Tensor, h: torch.Tensor | None, params: QuantizeParams, spec: GroupQuant) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(q int8, scale [rows, groups], method used) on the group's grid with per-group scales."""
    scale = group_scales(w, h, params, spec)
    full = expand_scales(scale, spec.scale_group or w.shape[1], w.shape[1])
    method = "rtn" if QUANTIZERS[params.method].needs_hessian and h is None else params.method
    return QUANTIZERS[method].quantize(w, h, full, qmax_for_bits(spec.bits), params, None, levels_for(spec.grid, spec.bits)), scale, method


def quantize_tensor(name: str, group: str, w: torch.Tensor, h: torch.Tensor | None, params: QuantizeParams, dtype: str) -> tuple[QuantizedTensor, str]:
    """One matrix -> (its QuantizedTensor with salient blocks if on, the quantizer used)."""
    spec: GroupQuant = getattr(params, group)
    if spec.scale_group or spec.grid != "symmetric":
        q, scale, method = quantize_on_grid(w, h, params, spec)
        scale = scale.half() if spec.scale_group else scale.squeeze(1).half()
        return QuantizedTensor(name, group, spec.bits, q, scale, dtype, {}, spec.scale_group, spec.grid), method
    blocks = salient_blocks(w, h, params, spec)
    mult = None if blocks is None else multipliers(w.shape[1], blocks[0], spec.salient, blocks[1])
    q, scale, method = quantize_matrix(w, h, params, spec.bits, spec.k, mult)
    extras: dict[str, torch.Tensor] = {}
    if blocks is not None:
        q, extras = split(q, blocks[0], spec.salient, blocks[1])
    return QuantizedTensor(name, group, spec.bits, q, scale.squeeze(1).half(), dtype, extras), method


def tensor_report(qt: QuantizedTensor, method: str, w: torch.Tensor, h: torch.Tensor | None) -> dict:
    """Errors of the rebuilt weight (symbols and salient blocks), and of plain RTN at the same scale."""
    w_hat = qt.dequantize().float()
    scale = expand_scales(qt.scale.float().view(w.shape[0], -1), qt.scale_group or w.shape[1], w.shape[1])
    levels = levels_for(qt.grid, qt.bits)
    row = {
        "name": qt.name,
        "group": qt.group,
        "bits": qt.bits,
        "method": method,
        "shape": list(w.shape),
        "rel_recon_err": relative_reconstruction_error(w, w_hat),
        "rel_output_err": None,
        "rel_output_err_rtn": None,
    }
    if "salient.start" in qt.extras:
        row["salient_columns"] = [int(c) for c in qt.extras["salient.start"].tolist()]
    if h is not None:
        row["rel_output_err"] = relative_output_error(w, w_hat, h)
        row["rel_output_err_rtn"] = relative_output_error(w, (rtn(w, scale, levels.hi, None, levels).float() + levels.offset) * scale, h)
    return row


def add_lowrank(quantized: dict[str, QuantizedTensor], weights: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor | None],
                params: QuantizeParams) -> dict[str, QuantizedTensor]:
    """LQER: the `lowrank` extras on the lowrank_top matrices with the largest residual norm."""
    residuals = {name: weights[name] - qt.dequantize().float() for name, qt in quantized.items()}
    chosen = top_by_residual({name: float(r.norm()) for name, r in residuals.items()}, params.lowrank_top)
    out = dict(quantized)
    for name in chosen:
        h = hessians[name] if params.lowrank_metric == "output" else None
        extras = fit_lowrank(residuals[name], params.lowrank_rank, h, params.damp_frac, params.lowrank_u_bits, params.lowrank_v_bits, params.lowrank_group)
        out[name] = replace(quantized[name], extras={**quantized[name].extras, **extras})
    return out


def quantize_state(
    state: dict[str, torch.Tensor],
    hessians: dict[str, torch.Tensor],
    params: QuantizeParams,
    model_config: dict,
) -> QuantizedModel:
    """Quantize every large 2-D float tensor of `state`; keep the rest as passthrough floats.

    `hessians` maps weight names (any of a tied tensor's names) to H [cols, cols]."""
    unique, aliases = unique_tensors(state)
    names_of: dict[str, list[str]] = {name: [name] for name in unique}
    for alias, target in aliases.items():
        names_of[target].append(alias)
    quantized: dict[str, QuantizedTensor] = {}
    passthrough: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    weights: dict[str, torch.Tensor] = {}
    matrix_hessians: dict[str, torch.Tensor | None] = {}
    report: list[dict] = []
    for name, tensor in unique.items():
        tensor = tensor.detach().cpu()
        dtypes[name] = dtype_name(tensor.dtype)
        if not is_quantizable(tensor, params.min_numel):
            passthrough[name] = tensor.to(STORAGE_DTYPES[params.passthrough_dtype]) if tensor.is_floating_point() else tensor
            continue
        h = next((hessians[n] for n in names_of[name] if n in hessians), None)
        w = tensor.float()
        whole = QUANTIZERS[params.method].tensor
        special = None if whole is None else whole(name, tensor_group(name), w, model_config, dtypes[name])
        quantized[name], method = (special, params.method) if special is not None else quantize_tensor(name, tensor_group(name), w, h, params, dtypes[name])
        weights[name], matrix_hessians[name] = w, h
        row = tensor_report(quantized[name], method, w, h)
        report.append(row)
        log.info("quantized: %s group: %s bits: %d method: %s rel_recon_err: %.3e rel_output_err: %s", name, row["group"], row["bits"], method, row["rel_recon_err"], row["rel_output_err"])
    if params.lowrank_rank:
        quantized = add_lowrank(quantized, weights, matrix_hessians, params)
        for row in report:
            qt = quantized[row["name"]]
            if "lowrank.u" in qt.extras:
                h = matrix_hessians[row["name"]]
                row["rel_output_err_with_extras"] = None if h is None else relative_output_error(weights[row["name"]], qt.dequantize().float(), h)
    return QuantizedModel(model_config, quantized, passthrough, dtypes, aliases, report)


def summarize_report(report: list[dict]) -> dict[str, dict]:
    """Per group: tensors, parameters, and the mean/max relative errors."""
    out: dict[str, dict] = {}
    for row in report:
        g = out.setdefault(row["group"], {"tensors": 0, "params": 0, "recon": [], "output": [], "output_rtn": []})
        g["tensors"] += 1
        g["params"] += int(torch.tensor(row["shape"]).prod())
        g["recon"].append(row["rel_recon_err"])
        if row["rel_output_err"] is not None:
            g["output"].append(row["rel_output_err"])
            g["output_rtn"].append(row["rel_output_err_rtn"])
    summary = {}
    for group, g in out.items():
        summary[group] = {
            "tensors": g["tensors"],
            "params": g["params"],
            "rel_recon_err_mean": sum(g["recon"]) / len(g["recon"]),
            "rel_recon_err_max": max(g["recon"]),
            "rel_output_err_mean": sum(g["output"]) / len(g["output"]) if g["output"] else None,
            "rel_output_err_rtn_mean": sum(g["output_rtn"]) / len(g["output_rtn"]) if g["output_rtn"] else None,
        }
    return summary
