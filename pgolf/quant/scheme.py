"""The quantized tensor: one typed object that quantizers produce, the quantize stage stores, the
packer writes and the artifact loader rebuilds. Dequantization is written once, here:

    W_hat = symbols * scale[:, None]  +  sum over the extras' correction terms

`symbols` are int8 on the tensor's integer grid (`pgolf.quant.grids`; the default `symmetric`
grid has |q| <= 2**(bits-1) - 1 and the value q * scale, others add an offset: (q + offset) * scale),
`scale` one float16 per row, or with `scale_group` g > 0 one per run of g input columns of a row
([rows, ceil(cols / g)], the last run may be shorter; issue 15: ternary and Q^2). `extras` are float
tensors keyed ``"<term>.<part>"`` (e.g. ``"lowrank.u"``); `EXTRA_TERMS` maps each term to its
module's parts, their validation and its additive correction: the load side, kept small because
it is artifact runtime code (counted in bytes_code); each term is fitted by `<term>_fit.py`
(quantize side). Integer symbols inside an extra (low-bit factors, refinements) are stored as
float16 holding exact integers, checked integral by their term. A new kind of extra is one
module plus its fit, its params and one line here: the container stores extras generically.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pgolf.errors import ArtifactError
from pgolf.model.ternary import expand_scales
from pgolf.quant import lowrank, salient
from pgolf.quant.grids import GRIDS

STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
EXTRA_PART = re.compile(r"^([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)$")


@dataclass(frozen=True)
class ExtraTerm:
    """A kind of extra: its required and optional parts; `validate(parts, rows, cols)` raises
    ValueError on parts that do not fit a [rows, cols] matrix; `correction(parts, scale, cols)`
    -> the float32 [rows, cols] term it adds (`scale`: the float32 per-row scales)."""

    name: str
    parts: tuple[str, ...]
    optional: tuple[str, ...]
    validate: Callable[[Mapping[str, Tensor], int, int], None]
    correction: Callable[[Mapping[str, Tensor], Tensor, int], Tensor]


# The one registry of extras: name -> its parts, validation and correction (one line per kind).
EXTRA_TERMS: dict[str, ExtraTerm] = {
    term.name: term
    for term in (
        ExtraTerm(lowrank.NAME, lowrank.PARTS, lowrank.OPTIONAL, lowrank.validate, lowrank.correction),
        ExtraTerm(salient.NAME, salient.PARTS, (), salient.validate, salient.correction),
    )
}


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class QuantizedTensor:
    """One quantized weight matrix: integer symbols, per-row (or per-group) scales, optional extras."""

    name: str
    group: str
    bits: int
    q: Tensor  # int8 [rows, cols]
    scale: Tensor  # float16 [rows], or [rows, ceil(cols / scale_group)] with scale_group > 0
    dtype: str  # dtype of the rebuilt weight (the original's)
    extras: Mapping[str, Tensor] = field(default_factory=dict)  # "<term>.<part>" -> float tensor
    scale_group: int = 0  # input columns per scale; 0 = one scale per row
    grid: str = "symmetric"  # a name of pgolf.quant.grids.GRIDS

    def scale_shape(self) -> tuple[int, ...]:
        rows, cols = self.q.shape
        return (rows,) if not self.scale_group else (rows, -(-cols // self.scale_group))

    def check(self) -> None:
        """ArtifactError unless the parts fit together (shapes, ranges, known extras)."""
        where = f"tensor {self.name}"
        if self.q.dtype != torch.int8 or self.q.ndim != 2:
            raise ArtifactError(f"{where}: symbols must be a 2-D int8 tensor")
        if not 2 <= self.bits <= 8:
            raise ArtifactError(f"{where}: bits {self.bits} outside [2, 8]")
        if self.grid not in GRIDS:
            raise ArtifactError(f"{where}: unknown grid {self.grid!r} (known: {', '.join(GRIDS)})")
        lo, hi = GRIDS[self.grid].lo(self.bits), GRIDS[self.grid].hi(self.bits)
        if self.q.numel() and not lo <= int(self.q.min()) <= int(self.q.max()) <= hi:
            raise ArtifactError(f"{where}: symbols outside [{lo}, {hi}] for {self.bits} bits on the {self.grid} grid")
        if self.scale_group < 0:
            raise ArtifactError(f"{where}: scale_group {self.scale_group} is negative")
        if tuple(self.scale.shape) != self.scale_shape():
            raise ArtifactError(f"{where}: scale shape {tuple(self.scale.shape)} does not match {self.scale_shape()} for {tuple(self.q.shape)} symbols")
        if self.extras and (self.scale_group or self.grid != "symmetric"):
            raise ArtifactError(f"{where}: extras need one scale per row on the symmetric grid")
        if not bool(torch.isfinite(self.scale).all()):
            raise ArtifactError(f"{where}: non-finite scales")
        for term, parts in extras_by_term(self.extras, where).items():
            spec = EXTRA_TERMS[term]
            if not set(spec.parts) <= set(parts) <= set(spec.parts + spec.optional):
                allowed = ", ".join(spec.parts) + (f" (optional: {', '.join(spec.optional)})" if spec.optional else "")
                raise ArtifactError(f"{where}: extra {term} needs parts {allowed}, got {', '.join(sorted(parts))}")
            for part, tensor in parts.items():
                if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
                    raise ArtifactError(f"{where}: extra {term}.{part} must be finite floats")
            try:
                spec.validate(parts, *self.q.shape)
            except ValueError as exc:
                raise ArtifactError(f"{where}: extra {term}: {exc}") from None

    def dequantize(self) -> Tensor:
        """W_hat in the original dtype (see the module docstring)."""
        scale = self.scale.float()
        rows, cols = self.q.shape
        if self.scale_group or self.grid != "symmetric":
            full = expand_scales(scale.view(rows, -1), self.scale_group or cols, cols)
            return ((self.q.float() + GRIDS[self.grid].offset) * full).to(STORAGE_DTYPES.get(self.dtype, torch.float32))
        w = self.q.float() * scale.unsqueeze(1)
        for term, parts in extras_by_term(self.extras, f"tensor {self.name}").items():
            correction = EXTRA_TERMS[term].correction(parts, scale, cols)
            if tuple(correction.shape) != (rows, cols):
                raise ArtifactError(f"tensor {self.name}: extra {term} gives shape {tuple(correction.shape)}, expected {(rows, cols)}")
            w = w + correction
        return w.to(STORAGE_DTYPES.get(self.dtype, torch.float32))


def extras_by_term(extras: Mapping[str, Tensor], where: str) -> dict[str, dict[str, Tensor]]:
    """{"lowrank.u": u, "lowrank.v": v} -> {"lowrank": {"u": u, "v": v}}; unknown terms are errors."""
    out: dict[str, dict[str, Tensor]] = {}
    for key, tensor in extras.items():
        match = EXTRA_PART.match(key)
        if match is None:
            raise ArtifactError(f"{where}: extra name {key!r} is not '<term>.<part>'")
        term, part = match.groups()
        if term not in EXTRA_TERMS:
            raise ArtifactError(f"{where}: unknown extra {term!r} (known: {', '.join(EXTRA_TERMS) or 'none'})")
        out.setdefault(term, {})[part] = tensor
    return out
