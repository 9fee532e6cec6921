"""The registries of quantization: which names `quantize.method` and `quantize.scale` accept, and
the code each selects. A new quantizer is one entry here (plus its module and params)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from pgolf.quant.gptq import gptq
from pgolf.quant.rtn import Levels, clip_search_scale, rtn, std_scale
from pgolf.quant.scheme import QuantizedTensor
from pgolf.quant.ternary import ternary_tensor

# tensor(name, group, w, model_config, dtype) -> the whole QuantizedTensor, or None: quantize as usual
TensorQuantizer = Callable[[str, str, Tensor, dict, str], "QuantizedTensor | None"]


@dataclass(frozen=True)
class Quantizer:
    """`quantize(w, h, scale, maxq, params, mult, levels)` -> int8 symbols (`mult`: None, or
    per-column grid refinement, see `pgolf.quant.salient_fit`; `levels`: None, or another integer
    grid, `scale` then [rows, cols]); `needs_hessian`: falls back to RTN without H; `tensor`: a
    whole-tensor quantizer tried first (e.g. ternary block matrices), None for none."""

    quantize: Callable[..., Tensor]
    needs_hessian: bool
    description: str
    tensor: TensorQuantizer | None = None


def _gptq(w: Tensor, h: Tensor, scale: Tensor, maxq: int, params, mult: Tensor | None = None, levels: Levels | None = None) -> Tensor:
    return gptq(w, h, scale, maxq, params.block_size, params.damp_frac, params.act_order, mult, levels)


def _rtn(w: Tensor, h: Tensor | None, scale: Tensor, maxq: int, params, mult: Tensor | None = None, levels: Levels | None = None) -> Tensor:
    return rtn(w, scale, maxq, mult, levels)


QUANTIZERS: dict[str, Quantizer] = {
    "gptq": Quantizer(_gptq, True, "Hessian-aware error feedback (Frantar et al. 2022)"),
    "rtn": Quantizer(_rtn, False, "round-to-nearest baseline"),
    "ternary": Quantizer(_gptq, True, "block matrices of a ternary-trained model as its trits + per-group scales (#640); the rest by gptq", ternary_tensor),
}


def _std(w: Tensor, params, k: float, maxq: float, h: Tensor | None, levels: Levels | None = None) -> Tensor:
    return std_scale(w, k, maxq)


def _clip_search(w: Tensor, params, k: float, maxq: float, h: Tensor | None, levels: Levels | None = None) -> Tensor:
    return clip_search_scale(w, maxq, None if h is None else h.diagonal(), params.clip_candidates, levels=levels)


# name -> (w, params, k, maxq, h, levels) -> per-row scale [rows, 1] (maxq: the grid's reach, hi + offset)
SCALE_RULES: dict[str, Callable[..., Tensor]] = {"std": _std, "clip_search": _clip_search}
