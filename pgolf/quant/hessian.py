"""Input second moments ``H = sum_x x x^T`` of every linear layer, collected with forward hooks.

`HessianAccumulator.add_batch` is the only numerics here (the GPTQ split: accumulate, then
quantize). `collect_hessians` hooks each ``nn.Linear`` of a model, runs batches through it, and
shares one accumulator between layers that receive the *same* input tensor in a forward pass
(e.g. q/k/v projections of one attention block, or gate/up of an MLP).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


class HessianAccumulator:
    """Running ``sum X^T X`` (float64) over rows of inputs with `features` columns."""

    def __init__(self, features: int) -> None:
        self.h = torch.zeros(features, features, dtype=torch.float64)
        self.rows = 0

    def add_batch(self, x: torch.Tensor) -> None:
        """Add the inputs `x` [..., features] (any leading shape)."""
        x = x.detach().reshape(-1, self.h.shape[0]).float()
        self.h += (x.T @ x).double()
        self.rows += x.shape[0]


@dataclass(frozen=True)
class HessianSet:
    """Hessians keyed by group name; `layers` maps each linear weight name to its group."""

    hessians: dict[str, torch.Tensor]
    layers: dict[str, str]
    tokens: int

    def for_weight(self, weight_name: str) -> torch.Tensor | None:
        group = self.layers.get(weight_name)
        return None if group is None else self.hessians[group]


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear (subclasses included) by qualified module name."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[torch.Tensor]) -> HessianSet:
    """Run `batches` (LongTensor [B, T] each) through `model` and accumulate each layer's H.

    Sharing is decided on the first batch: layers whose hook sees the identical tensor object
    form one group, named after the first of them to run. Later batches feed each group once.
    """
    layers = linear_layers(model)
    group_of: dict[str, str] = {}
    accumulators: dict[str, HessianAccumulator] = {}
    first_pass_inputs: dict[int, tuple[str, torch.Tensor]] = {}
    state = {"first": True}

    def hook_for(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if state["first"]:
                owner = first_pass_inputs.get(id(x))
                if owner is not None and owner[1] is x:
                    group_of[name] = group_of[owner[0]]
                    return
                first_pass_inputs[id(x)] = (name, x)  # keeps x alive: ids stay unique this pass
                group_of[name] = name
                accumulators[name] = HessianAccumulator(x.shape[-1])
            elif group_of.get(name) != name:
                return
            accumulators[name].add_batch(x)

        return hook

    handles = [mod.register_forward_pre_hook(hook_for(name)) for name, mod in layers.items()]
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for batch in batches:
            model(batch)
            tokens += batch.numel()
            if state["first"]:
                state["first"] = False
                first_pass_inputs.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    weight_group = {f"{name}.weight": f"{group}.weight" for name, group in group_of.items()}
    hessians = {f"{group}.weight": acc.h.float() for group, acc in accumulators.items()}
    log.info("hessians: %d layers, %d groups, tokens: %d", len(weight_group), len(hessians), tokens)
    return HessianSet(hessians=hessians, layers=weight_group, tokens=tokens)
