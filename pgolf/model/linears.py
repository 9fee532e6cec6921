"""The kinds of block linear: what every attention and MLP matrix of a block is built as.

`train.model.block_linear` names an entry of BLOCK_LINEARS. An entry has a `shared` builder (a
module shared by all block linears, registered once on the GPT, e.g. a hypernetwork; None for
none) and a `make` builder called once per matrix with its logical role. The default `dense` is
the baseline's CastedLinear, so a default model is built (and initialized) exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pgolf.config.model import ModelParams
from pgolf.model.layers import CastedLinear

ROLES = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc", "mlp.proj")  # the matrices of a block


@dataclass(frozen=True)
class LinearSpec:
    """One block matrix: its layer (the block's index), role (one of ROLES) and shape."""

    layer: int
    role: str
    in_features: int
    out_features: int
    zero_init: bool = False


# make(config, shared, spec) -> the module computing x @ W^T for that matrix
MakeLinear = Callable[[ModelParams, "nn.Module | None", LinearSpec], nn.Module]


@dataclass(frozen=True)
class LinearKind:
    shared: Callable[[ModelParams], nn.Module | None]
    make: MakeLinear
    description: str


def _no_shared(config: ModelParams) -> None:
    return None


def _dense(config: ModelParams, shared: nn.Module | None, spec: LinearSpec) -> nn.Module:
    return CastedLinear(spec.in_features, spec.out_features, zero_init=spec.zero_init)


BLOCK_LINEARS: dict[str, LinearKind] = {
    "dense": LinearKind(_no_shared, _dense, "a learned float matrix (the baseline)"),
}


class LinearFactory:
    """Builds a block's matrices for one model: `factory(spec)`. Holds the shared module, if any."""

    def __init__(self, config: ModelParams, shared: nn.Module | None) -> None:
        self.config, self.shared = config, shared
        self.kind = BLOCK_LINEARS[config.block_linear]

    def __call__(self, spec: LinearSpec) -> nn.Module:
        if spec.role not in ROLES:
            raise ValueError(f"unknown block matrix role {spec.role!r} (known: {', '.join(ROLES)})")
        return self.kind.make(self.config, self.shared, spec)


def default_factory(config: ModelParams) -> LinearFactory:
    """A factory without a shared module: what a Block built on its own (tests) uses."""
    return LinearFactory(config, BLOCK_LINEARS[config.block_linear].shared(config))
