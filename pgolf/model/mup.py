"""muP width transfer (PR #4; Yang et al. 2022, "Tensor Programs V"): the output logits scaled by
base_width/width and the initialization that goes with it, so that learning rates found at the
base width hold at other widths. The optimizer side (Muon update scale) is in pgolf.optim."""

from __future__ import annotations

from torch import nn

from pgolf.config.model import ModelParams


def logit_multiplier(config: ModelParams) -> float:
    """base_width / width: the muP output multiplier (1 at the base width)."""
    if config.mup_base_width is None:
        raise ValueError("mup_base_width is off")
    return config.mup_base_width / config.width


def init_weights(model: nn.Module) -> None:
    """The muP initialization of a freshly built GPT (in place)."""
    raise NotImplementedError("muP initialization is not implemented yet (issue 15)")
