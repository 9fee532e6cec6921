"""muP width transfer (PR #4; Yang et al. 2022, "Tensor Programs V", arXiv:2203.03466, Table 8; the
spectral view for Muon: Yang, Simon & Bernstein 2023, arXiv:2310.17813): the output logits scaled by
base_width/width and the initialization that goes with it, so that learning rates found at the base
width hold at other widths. (PR #4's own text is not stored here; these are the papers' rules.)

The rules, per kind of parameter (width n, base width n0; "matrix" = both dims grow with n):

  kind                        init                               update
  block matrices (Muon)       semi-orthogonal, norm sqrt(out/in)  Muon x sqrt(out/in) (pgolf.optim)
  zero-init projections       zero (as the baseline)              as above
  token embedding (Adam)      std tied_embed_init_std, any n      Adam lr unscaled
  head: tied = the embedding  the same (times n0/n in forward)    Adam lr unscaled
  head: untied (Adam)         zero (as the baseline)              Adam lr unscaled
  gains, mixes, skips (Adam)  as the baseline                     Adam lr unscaled

Why the Adam groups keep their lr: Table 8 of Tensor Programs V moves muP's output scaling into the
forward multiplier n0/n, after which every vector-like parameter (one dimension that grows with n,
or none: embeddings, the readout, per-channel gains) takes a width-independent init and Adam lr;
only matrix-like parameters change, and those are Muon's here. Under the spectral condition an
update of operator norm sqrt(fan_out/fan_in) (Muon's orthogonalized update times that factor)
changes each coordinate of the output by O(1) at any width; the semi-orthogonal initialization of
the same norm puts the initial weights on the same footing. A tied embedding serves both ends:
constant init std is muP's input layer, and with the n0/n multiplier its initial logits shrink as
n0/sqrt(n), muP's 1/fan_in^2 output variance. Attention keeps 1/sqrt(head_dim): hold head_dim
fixed (grow the head count) when changing the width, as bench/mup_transfer.py does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.config.model import ModelParams

# Matrices outside the blocks that the matrix group (Muon) owns: the lifts of the token tables.
TABLE_LIFTS = ("bigram.lift", "value_embed.lift")


def logit_multiplier(config: ModelParams) -> float:
    """base_width / width: the muP output multiplier (1 at the base width)."""
    if config.mup_base_width is None:
        raise ValueError("mup_base_width is off")
    return config.mup_base_width / config.width


def is_on(model: nn.Module) -> bool:
    """Whether `model` (a GPT) was built with muP (train.model.mup_base_width set)."""
    config = getattr(model, "config", None)
    return isinstance(config, ModelParams) and config.mup_base_width is not None


def spectral_init_(weight: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """In place: a random semi-orthogonal [out, in] matrix times sqrt(out/in), so every singular
    value is sqrt(fan_out/fan_in) (the spectral condition's initial norm)."""
    if weight.ndim != 2:
        raise ValueError(f"spectral_init_ needs a matrix, got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    with torch.no_grad():
        return nn.init.orthogonal_(weight, gain=(out_features / in_features) ** 0.5, generator=generator)


def hidden_matrices(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The block matrices and table lifts (muP's matrix-like parameters), by module name."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (name.startswith("blocks.") or name in TABLE_LIFTS)
    ]


def init_weights(model: nn.Module) -> None:
    """The muP initialization of a freshly built GPT (in place): every hidden matrix that is not
    zero-initialized gets `spectral_init_`; the embedding, the head and the vectors keep the
    baseline's width-independent initialization (see the table above)."""
    matrices = hidden_matrices(model)
    if not matrices:
        raise ValueError("mup_base_width: this model has no block matrices (nn.Linear) to initialize; muP here covers block_linear dense and ternary")
    for _, module in matrices:
        if not getattr(module, "zero_init", False):
            spectral_init_(module.weight)
