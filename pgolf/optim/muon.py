"""Muon: momentum SGD whose update for each 2-D matrix is orthogonalized by Newton-Schulz.

The numerics are pure functions (`newton_schulz`, `muon_update`); `Muon` is a thin optimizer
around them. Idea and coefficients: K. Jordan et al., "Muon" (kellerjordan.github.io/posts/muon),
as used by modded-nanogpt and the Parameter Golf baseline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Coefficients = Sequence[Sequence[float]]
NS_EPS = 1e-7
BASELINE_COEFFICIENTS = ((3.4445, -4.7750, 2.0315),)
# Per-iteration schedule for 5 steps from "The Polar Express" (Amsel et al., 2025), as used by
# modded-nanogpt and frontier records; paste into train.optim.matrix.ns_coefficients to use it.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def newton_schulz(G: Tensor, steps: int, coefficients: Coefficients) -> Tensor:
    """Approximate U V^T of G = U S V^T with `steps` quintic iterations X <- aX + (bA + cA^2)X, A = XX^T.

    `coefficients` holds one (a, b, c) triple used at every step, or one triple per step.
    Runs in bfloat16 on CUDA and float32 elsewhere; returns G's shape in float32.
    """
    if G.ndim != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(G.shape)}")
    if len(coefficients) not in (1, steps):
        raise ValueError(f"need 1 or {steps} coefficient triples, got {len(coefficients)}")
    schedule = list(coefficients) * steps if len(coefficients) == 1 else list(coefficients)
    dtype = torch.bfloat16 if G.is_cuda else torch.float32
    X = G.to(dtype)
    transposed = X.size(0) > X.size(1)
    if transposed:
        X = X.T  # iterate on the wide orientation: A = XX^T is the small Gram matrix
    X = X / (X.norm() + NS_EPS)  # spectral norm <= Frobenius norm <= 1
    for a, b, c in schedule[:steps]:
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X.float()


def nesterov_momentum(grad: Tensor, buffer: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """Update `buffer` in place (buf = m*buf + g) and return the direction to orthogonalize."""
    buffer.mul_(momentum).add_(grad)
    return grad.add(buffer, alpha=momentum) if nesterov else buffer.clone()


def row_normalized(direction: Tensor) -> Tensor:
    """Each row divided by its L2 norm (MuonEq-R, openai/parameter-golf PR #1285): the rows enter
    Newton-Schulz with equal weight."""
    return direction / direction.float().norm(dim=1, keepdim=True).clamp_min(NS_EPS).to(direction.dtype)


def baseline_scale(rows: int, cols: int) -> float:
    """sqrt(max(1, rows/cols)): the baseline's (modded-nanogpt's) scale of an orthogonalized update."""
    return max(1.0, rows / cols) ** 0.5


def spectral_scale(rows: int, cols: int) -> float:
    """sqrt(fan_out/fan_in) = sqrt(rows/cols): the spectral condition for feature learning (Yang,
    Simon & Bernstein 2023, arXiv:2310.17813): an update of operator norm sqrt(fan_out/fan_in) moves
    each output coordinate by O(1) whatever the width; muP's Muon scale (PR #4)."""
    return (rows / cols) ** 0.5


# Muon's `update_scale` names one of these: (rows, cols) of the matrix -> multiplier of its update.
UPDATE_SCALES: dict[str, Callable[[int, int], float]] = {"baseline": baseline_scale, "spectral": spectral_scale}


def muon_update(direction: Tensor, steps: int, coefficients: Coefficients, row_normalize: bool, update_scale: str = "baseline") -> Tensor:
    """The orthogonalized update of one matrix, times UPDATE_SCALES[update_scale](rows, cols)
    (baseline: sqrt(max(1, rows/cols))).

    With `row_normalize` the direction's rows are normalized before orthogonalization (MuonEq-R).
    """
    if update_scale not in UPDATE_SCALES:
        raise ValueError(f"unknown Muon update_scale {update_scale!r} (known: {', '.join(UPDATE_SCALES)})")
    update = newton_schulz(row_normalized(direction) if row_normalize else direction, steps, coefficients)
    return update * UPDATE_SCALES[update_scale](direction.size(0), direction.size(1))


def compiled_update(**compile_options: object) -> Callable[..., Tensor]:
    """`muon_update` under torch.compile (as the official train_gpt.py compiles its Newton-Schulz):
    on CUDA one matrix's update is a few fused kernels instead of ~45 eager launches, which left the
    GPU waiting on the CPU (gpu-measurements/train-step-profile-h200.txt). A graph per matrix
    orientation; shapes turn dynamic after the second."""
    return torch.compile(muon_update, fullgraph=True, **compile_options)


def newton_schulz_cost(shape: Sequence[int]) -> int:
    """The work of Newton-Schulz on one matrix, up to a constant: rows * cols * min(rows, cols)."""
    rows, cols = shape
    return rows * cols * min(rows, cols)


def assign_owners(costs: Sequence[int], world_size: int) -> list[int]:
    """The rank that orthogonalizes each matrix: largest cost first, each to the least-loaded rank
    (ties: the earlier matrix, the lower rank). Deterministic, so every rank computes the same list."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    load = [0] * world_size
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += costs[i]
    return owners


@dataclass(frozen=True)
class Shard:
    """Muon split across ranks (as openai/parameter-golf train_gpt.py does): this rank runs momentum
    and Newton-Schulz for its share of the matrices only; `sum_` sums a flat float32 buffer over
    ranks in place (pgolf.dist.sum_in_place), so every rank then applies every update."""

    rank: int
    world_size: int
    sum_: Callable[[Tensor], None]


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. Group keys: lr, momentum, nesterov, ns_steps, ns_coefficients,
    weight_decay (decoupled: p -= lr*wd*p), row_normalize, update_scale (a name of UPDATE_SCALES).
    `orthogonalize` computes the update (`muon_update`'s signature; `compiled_update()` on CUDA).

    With a `shard` over more than one rank, a matrix's momentum buffer lives only on its owner
    (`assign_owners`), and the other ranks contribute exact zeros to the summed update buffer, so the
    weights equal the unsharded optimizer's bit for bit (x + 0 = x in floating point)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: Coefficients = BASELINE_COEFFICIENTS,
        weight_decay: float = 0.0,
        row_normalize: bool = False,
        shard: Shard | None = None,
        update_scale: str = "baseline",
        orthogonalize: Callable[..., Tensor] = muon_update,
    ) -> None:
        if update_scale not in UPDATE_SCALES:
            raise ValueError(f"unknown Muon update_scale {update_scale!r} (known: {', '.join(UPDATE_SCALES)})")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=[list(t) for t in ns_coefficients],
            weight_decay=weight_decay,
            row_normalize=row_normalize,
            update_scale=update_scale,
        )
        super().__init__(params, defaults)
        self.shard = shard if shard is not None and shard.world_size > 1 else None
        self.orthogonalize = orthogonalize  # muon_update, or a torch.compile of it (compiled_update)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # a state saved before update_scale existed
            group.setdefault("update_scale", "baseline")

    def _update(self, group: dict, p: Tensor) -> Tensor:
        """Momentum, then the orthogonalized update of `p` (float32, p's shape)."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        direction = nesterov_momentum(p.grad, state["momentum_buffer"], group["momentum"], group["nesterov"])
        return self.orthogonalize(direction, group["ns_steps"], group["ns_coefficients"], group["row_normalize"], group["update_scale"])

    @staticmethod
    def _apply(group: dict, p: Tensor, update: Tensor) -> None:
        if group["weight_decay"]:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.add_(update.to(p.dtype), alpha=-group["lr"])

    def owners(self) -> list[int]:
        """The owning rank of each parameter, in param-group order (all on rank 0 without a shard)."""
        params = [p for group in self.param_groups for p in group["params"]]
        if self.shard is None:
            return [0] * len(params)
        return assign_owners([newton_schulz_cost(p.shape) for p in params], self.shard.world_size)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.shard is not None:
            self._sharded_step()
            return loss
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._apply(group, p, self._update(group, p))
        return loss

    def _sharded_step(self) -> None:
        shard = self.shard
        entries = [(group, p, owner) for (group, p), owner in zip(self._group_params(), self.owners(), strict=True) if p.grad is not None]
        if not entries:
            return
        flat = torch.zeros(sum(p.numel() for _, p, _ in entries), dtype=torch.float32, device=entries[0][1].device)
        offset = 0
        for group, p, owner in entries:
            if owner == shard.rank:
                flat[offset : offset + p.numel()] = self._update(group, p).reshape(-1)
            else:
                self.state.pop(p, None)  # a state loaded from a checkpoint: its owner keeps it
            offset += p.numel()
        shard.sum_(flat)
        offset = 0
        for group, p, _ in entries:
            self._apply(group, p, flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def _group_params(self) -> list[tuple[dict, Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"]]

    @contextlib.contextmanager
    def full_state(self) -> Iterator[None]:
        """Call on every rank: inside, every rank holds every momentum buffer (to save a checkpoint);
        afterwards the non-owners drop them again. Nothing happens without a shard."""
        if self.shard is None:
            yield
            return
        params = self._group_params()
        owners = self.owners()
        mine = {id(p) for (_, p), owner in zip(params, owners, strict=True) if owner == self.shard.rank and "momentum_buffer" in self.state.get(p, {})}
        flags = torch.tensor([float(id(p) in mine) for _, p in params], device=params[0][1].device)
        self.shard.sum_(flags)  # which matrices have a buffer anywhere (none before the first step)
        present = [p for (_, p), flag in zip(params, flags.tolist(), strict=True) if flag > 0]
        flat = torch.zeros(sum(p.numel() for p in present), dtype=torch.float32, device=params[0][1].device)
        offset = 0
        for p in present:
            if id(p) in mine:
                flat[offset : offset + p.numel()] = self.state[p]["momentum_buffer"].reshape(-1)
            offset += p.numel()
        self.shard.sum_(flat)
        borrowed = []
        offset = 0
        for p in present:
            if id(p) not in mine:
                self.state[p]["momentum_buffer"] = flat[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
                borrowed.append(p)
            offset += p.numel()
        try:
            yield
        finally:
            for p in borrowed:
                self.state.pop(p, None)
