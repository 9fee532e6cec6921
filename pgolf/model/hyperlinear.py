"""Hypernetwork-generated block linears ("BioDNA", openai/parameter-golf PR #16).

A learned embedding of each layer, e_l [layers, e], and of each matrix type, e_t [roles, e], feed two small
MLPs; their outputs are a row factor r [out, rank] and a column factor c [in, rank], and the matrix is

    W(l, t) = r c^T / sqrt(in * rank),    r = R_t relu(A [e_l; e_t]),    c = C_t relu(B [e_l; e_t]).

The trunks A, B [hidden, 2e] are shared by every matrix; the output heads R_t [out*rank, hidden] and
C_t [in*rank, hidden] exist once per matrix type (the types' shapes differ). A layer computes
(x @ c) @ r^T / sqrt(in * rank) and never forms W. The heads of role "attn.q" are named heads.attn.q,
so the quantizer's name groups (attention, mlp) apply to them as to the dense matrices they replace.

The hypernetwork holds every parameter; a HyperLinear holds none, only a plain (unregistered)
reference to it, so a state dict lists the hypernetwork once and loading it regenerates all the
layers. Nothing is cached: each call computes its factors afresh from the current weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Head init so that r and c entries have variance 3^(-1/2) each: W then starts with the dense
# CastedLinear's entry variance 1/(3 in) (nn.Linear's uniform(+-1/sqrt(in)) init).
FACTOR_VARIANCE = 3.0**-0.5


class FactorHeads(nn.Module):
    """One matrix type's output heads: hidden -> r [out, rank] and hidden -> c [in, rank]."""

    def __init__(self, in_features: int, out_features: int, rank: int, hidden: int, zero_init: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.zero_init = in_features, out_features, zero_init
        self.row = nn.Linear(hidden, out_features * rank, bias=False)
        self.col = nn.Linear(hidden, in_features * rank, bias=False)
        std = math.sqrt(2.0 * FACTOR_VARIANCE / hidden)  # relu halves the unit second moment of the trunk output
        nn.init.normal_(self.row.weight, std=std)
        nn.init.normal_(self.col.weight, std=std)
        if zero_init:  # r = 0: the matrix starts at zero (the baseline's zero-initialized output projections)
            nn.init.zeros_(self.row.weight)


class HyperNetwork(nn.Module):
    """The genotype: layer and type embeddings, the two trunk MLPs, and one FactorHeads per matrix type."""

    def __init__(self, layers: int, roles: tuple[str, ...], embed_dim: int, hidden: int, rank: int) -> None:
        super().__init__()
        self.roles, self.rank, self.hidden = roles, rank, hidden
        self.layer_emb = nn.Parameter(torch.randn(layers, embed_dim))
        self.role_emb = nn.Parameter(torch.randn(len(roles), embed_dim))
        self.row_trunk = nn.Linear(2 * embed_dim, hidden, bias=False)
        self.col_trunk = nn.Linear(2 * embed_dim, hidden, bias=False)
        for trunk in (self.row_trunk, self.col_trunk):  # unit-variance pre-activations from unit-variance embeddings
            nn.init.normal_(trunk.weight, std=(2 * embed_dim) ** -0.5)
        self.heads = nn.ModuleDict({kind: nn.ModuleDict() for kind in dict.fromkeys(role.split(".")[0] for role in roles)})

    def add(self, layer: int, role: str, in_features: int, out_features: int, zero_init: bool) -> None:
        """Declare matrix (layer, role); the first matrix of a type creates its heads, the rest must match them."""
        if role not in self.roles:
            raise ValueError(f"hyper: unknown matrix role {role!r} (known: {', '.join(self.roles)})")
        if not 0 <= layer < self.layer_emb.size(0):
            raise ValueError(f"hyper: layer {layer} out of range (the hypernetwork embeds {self.layer_emb.size(0)} layers)")
        kind, name = role.split(".")
        if name not in self.heads[kind]:
            self.heads[kind][name] = FactorHeads(in_features, out_features, self.rank, self.hidden, zero_init)
        heads = self.heads[kind][name]
        if (heads.in_features, heads.out_features, heads.zero_init) != (in_features, out_features, zero_init):
            raise ValueError(
                f"hyper: {role} of layer {layer} is [{out_features}, {in_features}] zero_init={zero_init}, but an earlier "
                f"{role} is [{heads.out_features}, {heads.in_features}] zero_init={heads.zero_init}; one head serves them all"
            )

    def factors(self, layer: int, role: str) -> tuple[Tensor, Tensor]:
        """(r [out, rank], c [in, rank]) of matrix (layer, role), float32."""
        kind, name = role.split(".")
        heads = self.heads[kind][name]
        z = torch.cat((self.layer_emb[layer], self.role_emb[self.roles.index(role)]))  # [2e]
        r = heads.row(F.relu(self.row_trunk(z))).view(heads.out_features, self.rank)
        c = heads.col(F.relu(self.col_trunk(z))).view(heads.in_features, self.rank)
        return r, c

    def weight(self, layer: int, role: str) -> Tensor:
        """W = r c^T / sqrt(in * rank) [out, in]: for inspection and tests only, never in forward."""
        r, c = self.factors(layer, role)
        return r @ c.T / math.sqrt(c.size(0) * self.rank)


class HyperLinear(nn.Module):
    """x @ W(layer, role)^T computed as (x @ c) @ r^T / sqrt(in * rank); no parameters of its own."""

    def __init__(self, hyper: HyperNetwork, layer: int, role: str, in_features: int, out_features: int, zero_init: bool = False) -> None:
        super().__init__()
        hyper.add(layer, role, in_features, out_features, zero_init)
        object.__setattr__(self, "hyper", hyper)  # a plain reference: not a submodule, so listed once (on the GPT)
        self.layer, self.role = layer, role
        self.in_features, self.out_features = in_features, out_features
        self.scale = 1.0 / math.sqrt(in_features * hyper.rank)

    def forward(self, x: Tensor) -> Tensor:
        r, c = self.hyper.factors(self.layer, self.role)
        return ((x @ c.to(x.dtype)) * self.scale) @ r.to(x.dtype).T

    def extra_repr(self) -> str:
        return f"layer={self.layer}, role={self.role}, in_features={self.in_features}, out_features={self.out_features}, rank={self.hyper.rank}"
