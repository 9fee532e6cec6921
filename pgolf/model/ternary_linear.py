"""BitNet b1.58 quantization-aware training (arXiv:2402.17764; the 1.1570 ternary record, openai/parameter-golf
PR #640): a block linear that keeps a latent float weight and computes with its ternarization.

Weights only, as in the record (activations stay in the compute dtype). The forward pass uses exactly
`ternary_weight(latent, group)` (what the `ternary` quantizer stores); the backward pass treats the
ternarization as the identity (straight-through estimator), so the latent weight receives the gradient
of the loss with respect to the ternary weight.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pgolf.model.layers import CastedLinear
from pgolf.model.ternary import ternary_weight


def straight_through(latent: Tensor, quantized: Tensor) -> Tensor:
    """`quantized` in the forward pass, bit for bit; gradient passed unchanged to `latent` in the backward pass.

    (The record's form latent + (quantized - latent).detach() is equal only up to float rounding.)
    """
    return quantized.detach() + (latent - latent.detach())


class TernaryLinear(CastedLinear):
    """x @ T(W)^T with T = per-group absmean ternarization of the latent weight W [out, in].

    A CastedLinear (so an nn.Linear: GPTQ calibration hooks and TTT LoRA see it) built and initialized
    exactly as the dense block matrix would be, zero_init included; only the forward differs.
    """

    def __init__(self, in_features: int, out_features: int, group: int, zero_init: bool = False) -> None:
        super().__init__(in_features, out_features, zero_init=zero_init)
        self.group = group

    def ternary(self) -> Tensor:
        """T(W), detached: the float weight the layer computes with (trits times group scales)."""
        return ternary_weight(self.weight.detach(), self.group)

    def forward(self, x: Tensor) -> Tensor:
        w = straight_through(self.weight, self.ternary())
        return F.linear(x, w.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group={self.group}"
