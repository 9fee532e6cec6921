"""Gradient reduction overlapped with the backward pass, as torch's DDP does it (S. Li et al.,
"PyTorch Distributed", VLDB 2020, arXiv:2006.15704): gradients go into buckets in reverse parameter
order (roughly the order backward produces them); on the last micro-batch of a step a hook on each
parameter (`register_post_accumulate_grad_hook`) counts its bucket down, and a full bucket starts
its sum over ranks (an async all-reduce) while backward goes on. The other micro-batches only
accumulate (DDP's `no_sync`). Buckets start strictly in index order, so every rank issues the same
collectives in the same order whatever order its hooks fire in. `finish()` starts what is left
(a parameter that got no gradient this step), waits, and writes the mean over ranks back into the
gradients: sum, then divide by the world size, as the one flat all-reduce did.

Under a whole-model torch.compile the compiled backward hands over all gradients at its end, so
the buckets then overlap each other and the rest of the step, not the backward itself (the same
holds for DDP around a compiled model, as the official script has it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

BUCKET_BYTES = 25 * 2**20  # torch DDP's default bucket_cap_mb
Wait = Callable[[], None]
StartSum = Callable[[Tensor], Wait]  # starts an in-place sum over ranks, returns its wait (pgolf.dist.start_sum)


def plan_buckets(numels: Sequence[int], element_bytes: int, cap_bytes: int) -> list[list[int]]:
    """Parameter indices per bucket, last parameter first; a bucket closes before it would pass
    `cap_bytes` (one larger than the cap gets a bucket of its own)."""
    if cap_bytes < 1:
        raise ValueError(f"bucket cap must be >= 1 byte, got {cap_bytes}")
    buckets: list[list[int]] = []
    size = 0
    for i in reversed(range(len(numels))):
        nbytes = numels[i] * element_bytes
        if not buckets or size + nbytes > cap_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += nbytes
    return buckets


class OverlappedReduce:
    """Hooks on `params` that average their gradients over ranks on the armed (last) micro-batch.

    Usage per step: `arm()` before the last micro-batch's backward, `finish()` after it (before
    clipping and the optimizer). `remove()` takes the hooks off."""

    def __init__(self, params: Iterable[Tensor], start_sum: StartSum, world_size: int, cap_bytes: int = BUCKET_BYTES) -> None:
        self.params = [p for p in params if p.requires_grad]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) > 1:
            raise ValueError(f"OverlappedReduce needs one parameter dtype, got {sorted(map(str, dtypes))}")
        element_bytes = self.params[0].element_size() if self.params else 4
        self.buckets = plan_buckets([p.numel() for p in self.params], element_bytes, cap_bytes)
        self.bucket_of = {id(self.params[i]): b for b, members in enumerate(self.buckets) for i in members}
        self.start_sum, self.world_size = start_sum, world_size
        self.armed = False
        self.started: list[tuple[list[Tensor], Tensor, Wait]] = []  # (grads, flat, wait) in bucket order
        self._left: list[int] = []
        self._next = 0
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    def arm(self) -> None:
        """The next backward is the step's last: its gradients are reduced as buckets fill."""
        self.armed, self.started, self._next = True, [], 0
        self._left = [len(members) for members in self.buckets]

    def _on_grad(self, p: Tensor) -> None:
        if not self.armed:
            return
        self._left[self.bucket_of[id(p)]] -= 1
        while self._next < len(self.buckets) and self._left[self._next] == 0:
            self._start(self._next)

    def _start(self, bucket: int) -> None:
        grads = [g for i in self.buckets[bucket] if (g := self.params[i].grad) is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.started.append((grads, flat, self.start_sum(flat)))
        self._next = bucket + 1

    @torch.no_grad()
    def finish(self) -> None:
        """Start the buckets still waiting, wait for all, write the means into the gradients."""
        if not self.armed:
            raise RuntimeError("OverlappedReduce.finish() without arm() before the last backward")
        while self._next < len(self.buckets):
            self._start(self._next)
        for grads, flat, wait in self.started:
            wait()
            flat /= self.world_size
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        self.armed, self.started = False, []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
