"""Parameter groups as data: which optimizer owns which parameter, and its hyper-parameters.

`GROUP_TABLE` is read top to bottom; the first rule that matches a parameter owns it. Every
parameter lands in exactly one group (`assign_groups` checks it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from pgolf.config.train import OptimParams
from pgolf.model import mup
from pgolf.optim.muon import Muon, Shard, compiled_update, muon_update

Rule = Callable[[str, nn.Parameter], bool]


@dataclass(frozen=True)
class GroupRule:
    name: str  # also the key of its hyper-parameters in train.optim
    kind: str  # "muon" | "adam"
    matches: Rule


# The records' split (openai/parameter-golf record 2026-03-22_11L_EMA_GPTQ-lite..., PR #374 stack, and
# the PR #1851 record's CONTROL_TENSOR_NAME_PATTERNS): token tables (the BigramHash and value-embedding
# tables too) -> embed Adam; block matrices and the two tables' lifts -> Muon; control tensors (gates,
# residual mixes, lane factors, even when 2-D) and every other scalar/vector -> scalar Adam.
EMBED_TABLES = frozenset({"tok_emb.weight", "bigram.embed.weight", "value_embed.embed.weight"})
TABLE_LIFTS = frozenset({"bigram.lift.weight", "value_embed.lift.weight"})
CONTROL_MARKS = ("gate", "resid_mix", "lane_mix")


def is_control(name: str) -> bool:
    return any(mark in name for mark in CONTROL_MARKS)


def is_matrix(name: str, p: nn.Parameter) -> bool:
    return p.ndim == 2 and not is_control(name) and (name.startswith("blocks.") or name in TABLE_LIFTS)


GROUP_TABLE: tuple[GroupRule, ...] = (
    GroupRule("embed", "adam", lambda name, p: name in EMBED_TABLES),
    GroupRule("head", "adam", lambda name, p: name == "lm_head.weight"),
    GroupRule("matrix", "muon", is_matrix),
    GroupRule("hyper", "adam", lambda name, p: name.startswith("linear_shared.")),  # block_linear=hyper's generator
    GroupRule("scalar", "adam", lambda name, p: True),
)


def assign_groups(model: nn.Module, table: tuple[GroupRule, ...] = GROUP_TABLE) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Group name -> [(param name, param)], each trainable parameter in exactly one group."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {rule.name: [] for rule in table}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = next((rule for rule in table if rule.matches(name, param)), None)
        if owner is None:
            raise ValueError(f"parameter {name} matches no optimizer group")
        groups[owner.name].append((name, param))
    return groups


def build_optimizers(model: nn.Module, params: OptimParams, shard: Shard | None = None, compile_muon: bool = False) -> list[torch.optim.Optimizer]:
    """One optimizer per non-empty group, in table order; each param group carries `base_lr`.
    `shard` splits Muon's Newton-Schulz work across ranks (None: every rank does all of it);
    `compile_muon` runs Muon's update under torch.compile (the training loop's `compile` on CUDA).
    Adam is torch's fused kernel on CUDA (as the official script) and its foreach form elsewhere
    (bit-equal to the per-tensor loop on CPU).
    A muP model (pgolf.model.mup) gets Muon's spectral update scale sqrt(fan_out/fan_in); its Adam
    groups keep their learning rates at every width (muP's rule for vector-like parameters)."""
    update_scale = "spectral" if mup.is_on(model) else "baseline"
    optimizers: list[torch.optim.Optimizer] = []
    for rule in GROUP_TABLE:
        named = assign_groups(model)[rule.name]
        if not named:
            continue
        tensors = [p for _, p in named]
        hp = getattr(params, rule.name)
        if rule.kind == "muon":
            opt: torch.optim.Optimizer = Muon(
                tensors,
                lr=hp.lr,
                momentum=hp.momentum,
                nesterov=hp.nesterov,
                ns_steps=hp.ns_steps,
                ns_coefficients=hp.ns_coefficients,
                weight_decay=hp.weight_decay,
                row_normalize=hp.row_normalize,
                shard=shard,
                update_scale=update_scale,
                orthogonalize=compiled_update() if compile_muon else muon_update,
            )
        else:
            kernel = {"fused": True} if tensors[0].is_cuda else {"foreach": True}
            opt = torch.optim.AdamW(tensors, lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay, **kernel)
        for group in opt.param_groups:
            group["base_lr"] = hp.lr
            group["group_name"] = rule.name
        optimizers.append(opt)
    return optimizers


def set_schedule(optimizers: list[torch.optim.Optimizer], lr_scale: float, muon_momentum: float) -> None:
    """Apply this step's lr multiplier to every group and the warmed-up momentum to Muon."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_scale
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum


@contextlib.contextmanager
def full_optimizer_state(optimizers: list[torch.optim.Optimizer]) -> Iterator[None]:
    """Call on every rank around a checkpoint save: inside, sharded Muon's momentum is whole on every rank."""
    with contextlib.ExitStack() as stack:
        for opt in optimizers:
            if isinstance(opt, Muon):
                stack.enter_context(opt.full_state())
        yield
