"""Input second moments ``H = sum_x x x^T`` of every linear layer, collected with forward hooks.

`HessianAccumulator.add_batch` is the only numerics here (the GPTQ split: accumulate, then
quantize). `collect_hessians` hooks each ``nn.Linear`` of a model and runs batches through it;
every call of a layer counts (a layer reused in one forward accumulates each input), and layers
that received the *same* inputs (q/k/v of one attention block) are stored as one group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


class HessianAccumulator:
    """Running ``sum X^T X`` (float64) over rows of inputs with `features` columns."""

    def __init__(self, features: int, device: torch.device | str = "cpu") -> None:
        self.h = torch.zeros(features, features, dtype=torch.float64, device=device)
        self.rows = 0

    def add_batch(self, x: torch.Tensor) -> None:
        """Add the inputs `x` [..., features] (any leading shape)."""
        x = x.detach().reshape(-1, self.h.shape[0]).float()
        self.add_product((x.T @ x).double(), x.shape[0])

    def add_product(self, xtx: torch.Tensor, rows: int) -> None:
        """Add a precomputed ``x^T x`` (float64) of `rows` input rows."""
        self.h += xtx
        self.rows += rows


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


def group_identical(accumulators: dict[str, HessianAccumulator]) -> dict[str, str]:
    """Weight name -> group name: weights whose accumulated H (and row count) are bitwise equal
    share one group, named after the first of them in `accumulators` order."""
    group_of: dict[str, str] = {}
    representatives: list[str] = []
    for name, acc in accumulators.items():
        match = next(
            (rep for rep in representatives
             if accumulators[rep].rows == acc.rows and accumulators[rep].h.shape == acc.h.shape and torch.equal(accumulators[rep].h, acc.h)),
            None,
        )
        if match is None:
            representatives.append(name)
        group_of[name] = match or name
    return group_of


@torch.no_grad()
def collect_hessians(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    outputs: Mapping[str, nn.Module] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> HessianSet:
    """Run `batches` (LongTensor [B, T] each) through `model` and accumulate each layer's H.

    Every call of a layer adds its input, so a layer applied several times per forward (depth
    recurrence, shared blocks) accumulates all of them. ``x^T x`` is computed once per distinct
    input tensor of a forward pass and added to every layer that received that tensor; layers
    whose final H are identical (q/k/v of one attention block, gate/up of an MLP) are stored once,
    as one group named after the first of them to run. `outputs` maps a weight name to the module
    whose *output* that weight multiplies (a tied output head: the final norm), for weights that
    are not an nn.Linear's. `reduce` (a sum over ranks, when each rank ran a share of the batches)
    is applied to every accumulated H and to the row and token counts before layers are grouped;
    every rank must then have run at least one batch. The Hessians returned are on the CPU.
    """
    layers = linear_layers(model)
    accumulators: dict[str, HessianAccumulator] = {}
    products: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # id(x) -> (x, x^T x, rows), one forward

    def add(weight: str, x: torch.Tensor) -> None:
        hit = products.get(id(x))
        if hit is None or hit[0] is not x:
            rows = x.detach().reshape(-1, x.shape[-1]).float()
            hit = (x, (rows.T @ rows).double(), rows.shape[0])  # keeps x alive: ids stay unique
            products[id(x)] = hit
        if weight not in accumulators:
            accumulators[weight] = HessianAccumulator(x.shape[-1], x.device)
        accumulators[weight].add_product(hit[1], hit[2])

    handles = [mod.register_forward_pre_hook(lambda _m, args, w=f"{name}.weight": add(w, args[0])) for name, mod in layers.items()]
    handles += [mod.register_forward_hook(lambda _m, _args, out, w=weight: add(w, out)) for weight, mod in (outputs or {}).items()]
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for batch in batches:
            model(batch)
            tokens += batch.numel()
            products.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if reduce is not None:
        device = next(iter(accumulators.values())).h.device if accumulators else torch.device("cpu")
        for acc in accumulators.values():
            acc.h, acc.rows = reduce(acc.h), int(reduce(torch.tensor([acc.rows], dtype=torch.float64, device=device)).item())
        tokens = int(reduce(torch.tensor([tokens], dtype=torch.float64, device=device)).item())
    weight_group = group_identical(accumulators)
    hessians = {group: accumulators[group].h.float().cpu() for group in dict.fromkeys(weight_group.values())}
    log.info("hessians: %d layers, %d groups, tokens: %d", len(weight_group), len(hessians), tokens)
    return HessianSet(hessians=hessians, layers=weight_group, tokens=tokens)
