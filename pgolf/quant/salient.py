"""Salient column blocks at higher precision (load side): AWQ-lite, parameter-golf PR #1908.

A few blocks of consecutive input columns, the most salient by activation statistics, are
quantized on a grid `2**shift` times finer than the row's step inside the same GPTQ solve. The
symbols keep the coarse part, q = round(q_fine / 2**shift), so their distribution is unchanged;
this term stores the remainder: ``fine`` [rows, blocks * width] integers in
[-2**(shift-1), 2**(shift-1) - 1] (float16), ``start`` [blocks] (first column of each block) and
``shift`` [1], float32. It adds ``fine * scale[:, None] / 2**shift`` at the blocks' columns.
Fitted by `pgolf.quant.salient_fit`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

NAME = "salient"
PARTS = ("fine", "start", "shift")
MAX_SHIFT = 6


def columns(start: Tensor, width: int) -> Tensor:
    """Column indices of every block, block after block: [blocks * width]."""
    return (start.long().unsqueeze(1) + torch.arange(width)).reshape(-1)


def correction(parts: Mapping[str, Tensor], scale: Tensor, cols: int) -> Tensor:
    fine, start = parts["fine"].float(), parts["start"]
    out = torch.zeros(fine.shape[0], cols)
    out[:, columns(start, fine.shape[1] // start.numel())] = fine * scale.unsqueeze(1) / 2.0 ** float(parts["shift"])
    return out


def validate(parts: Mapping[str, Tensor], rows: int, cols: int) -> None:
    fine, start, shift = parts["fine"], parts["start"], parts["shift"]
    if shift.shape != (1,) or float(shift) != round(float(shift)) or not 1 <= float(shift) <= MAX_SHIFT:
        raise ValueError(f"shift must be one integer in [1, {MAX_SHIFT}]")
    if start.ndim != 1 or start.numel() == 0 or not bool((start == start.round()).all()):
        raise ValueError("start must list the integer first column of each block")
    if fine.ndim != 2 or fine.shape[0] != rows or fine.shape[1] % start.numel():
        raise ValueError(f"fine shape {tuple(fine.shape)} does not hold {start.numel()} blocks of {rows} rows")
    width = fine.shape[1] // start.numel()
    first = sorted(int(s) for s in start.tolist())
    if width == 0 or first[0] < 0 or first[-1] + width > cols or any(b - a < width for a, b in zip(first, first[1:])):
        raise ValueError(f"blocks of {width} columns at {first} overlap or leave the {cols} columns")
    half = 2 ** (int(shift) - 1)
    if not bool((fine == fine.round()).all()) or (fine.numel() and (float(fine.min()) < -half or float(fine.max()) > half - 1)):
        raise ValueError(f"fine must hold integers in [{-half}, {half - 1}]")
