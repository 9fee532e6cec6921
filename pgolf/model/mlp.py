"""The feed-forward block: up-projection, squared (leaky) ReLU, zero-initialized down-projection."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config.model import ModelParams
from pgolf.model.linears import LinearFactory, LinearSpec, default_factory


def relu2(x: Tensor) -> Tensor:
    """relu(x)^2 (modded-nanogpt, the baseline)."""
    return F.relu(x).square()


def leaky_relu2(x: Tensor, slope: float) -> Tensor:
    """leaky_relu(x, slope)^2 (frontier records, slope 0.5)."""
    return F.leaky_relu(x, slope).square()


def activation_fn(config: ModelParams) -> Callable[[Tensor], Tensor]:
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "relu2": relu2,
        "leaky_relu2": partial(leaky_relu2, slope=config.leaky_slope),
    }
    return table[config.activation]


def mlp_hidden(config: ModelParams) -> int:
    return int(round(config.mlp_mult * config.width))


class MLP(nn.Module):
    def __init__(self, config: ModelParams, layer: int = 0, linear: LinearFactory | None = None) -> None:
        super().__init__()
        hidden = mlp_hidden(config)
        linear = linear or default_factory(config)
        self.fc = linear(LinearSpec(layer, "mlp.fc", config.width, hidden))
        self.proj = linear(LinearSpec(layer, "mlp.proj", hidden, config.width, zero_init=True))
        self.act = activation_fn(config)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))
