"""The registries of quantization: which names `quantize.method` and `quantize.scale` accept, and
the code each selects. A new quantizer is one entry here (plus its module and params)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from pgolf.quant.gptq import gptq
from pgolf.quant.rtn import clip_search_scale, rtn, std_scale


@dataclass(frozen=True)
class Quantizer:
    """`quantize(w, h, scale, maxq, params, mult)` -> int8 symbols (`mult`: None, or per-column grid
    refinement, see `pgolf.quant.salient_fit`); `needs_hessian`: falls back to RTN without H."""

    quantize: Callable[..., Tensor]
    needs_hessian: bool
    description: str


def _gptq(w: Tensor, h: Tensor, scale: Tensor, maxq: int, params, mult: Tensor | None = None) -> Tensor:
    return gptq(w, h, scale, maxq, params.block_size, params.damp_frac, params.act_order, mult)


def _rtn(w: Tensor, h: Tensor | None, scale: Tensor, maxq: int, params, mult: Tensor | None = None) -> Tensor:
    return rtn(w, scale, maxq, mult)


QUANTIZERS: dict[str, Quantizer] = {
    "gptq": Quantizer(_gptq, True, "Hessian-aware error feedback (Frantar et al. 2022)"),
    "rtn": Quantizer(_rtn, False, "round-to-nearest baseline"),
}


def _std(w: Tensor, params, k: float, maxq: int, h: Tensor | None) -> Tensor:
    return std_scale(w, k, maxq)


def _clip_search(w: Tensor, params, k: float, maxq: int, h: Tensor | None) -> Tensor:
    return clip_search_scale(w, maxq, None if h is None else h.diagonal(), params.clip_candidates)


# name -> (w, params, k, maxq, h) -> per-row scale [rows, 1]
SCALE_RULES: dict[str, Callable[..., Tensor]] = {"std": _std, "clip_search": _clip_search}
