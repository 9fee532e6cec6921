"""Layer-norm scale: a block's attention and MLP input norms are multiplied by 1/sqrt(layer + 1),
layer = the physical block index (openai/parameter-golf PR #315)."""

from __future__ import annotations

import math


def ln_scale(layer: int) -> float:
    if layer < 0:
        raise ValueError(f"layer index must be >= 0, got {layer}")
    return 1.0 / math.sqrt(layer + 1)
