"""BitNet b1.58 ternarization (Ma et al. 2024, arXiv:2402.17764; the 1.1570 ternary record,
openai/parameter-golf PR #640): each run of `group` consecutive input columns of a row shares the
scale s = mean |w| over the run, and w is replaced by s * clamp(round(w / s), -1, 1).

The one definition of the rounding: quantization-aware training uses it in the forward pass and the
`ternary` quantizer stores its trits and scales, so the packed model is exactly the trained one.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8  # floor of a group's scale (an all-zero group stays zero)


def group_scales(w: Tensor, group: int) -> Tensor:
    """[rows, ceil(cols / group)] float32: mean |w| of each run of `group` columns (the last run may be shorter)."""
    if w.ndim != 2:
        raise ValueError(f"ternarize needs a 2-D weight, got shape {tuple(w.shape)}")
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    rows, cols = w.shape
    groups = -(-cols // group)
    a = F.pad(w.float().abs(), (0, groups * group - cols)).view(rows, groups, group)
    counts = torch.full((groups,), float(group), device=w.device)
    counts[-1] = cols - (groups - 1) * group
    return (a.sum(-1) / counts).clamp_min(EPS)


def expand_scales(scales: Tensor, group: int, cols: int) -> Tensor:
    """[rows, cols]: each group's scale repeated over its columns."""
    return scales.repeat_interleave(group, dim=1)[:, :cols]


def ternarize(w: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """(trits int8 [rows, cols] in {-1, 0, 1}, scales float32 [rows, groups]) with w ~ trits * scale."""
    scales = group_scales(w, group)
    trits = torch.clamp(torch.round(w.float() / expand_scales(scales, group, w.size(1))), -1, 1)
    return trits.to(torch.int8), scales


def ternary_weight(w: Tensor, group: int) -> Tensor:
    """s * trits in w's dtype: the weight the ternary model computes with."""
    trits, scales = ternarize(w, group)
    return (trits.float() * expand_scales(scales, group, w.size(1))).to(w.dtype)


def ternary_latent(trits: Tensor, scales: Tensor, group: int) -> Tensor:
    """float32 W with ternary_weight(W, group) == trits * scales (to float rounding): W = trits * scale / mean|trits|
    per group (the record's "shrinkage fix"). Loading stored trits into a TernaryLinear, which ternarizes again,
    needs it: trits * scales itself would come back with each scale shrunk by its group's nonzero fraction."""
    t = trits.float()
    density = group_scales(t, group)  # mean |trit| of each group (EPS for an all-zero group, whose trits stay 0)
    return t * expand_scales(scales.float() / density, group, t.size(1))


TERNARY_KIND = "ternary"  # the train.model.block_linear value whose block matrices are ternary
# The state-dict names of a block's six matrices (pgolf.model.attention / pgolf.model.mlp).
BLOCK_MATRIX = re.compile(r"(^|\.)(attn\.(c_q|c_k|c_v|proj)|mlp\.(fc|proj))\.weight$")


def ternary_group(model_config: dict, name: str) -> int | None:
    """The scale group of weight `name` if the model computes with it ternarized, else None."""
    if model_config.get("block_linear") != TERNARY_KIND or not BLOCK_MATRIX.search(name):
        return None
    return int(model_config.get("ternary_group", 128))
