"""Depth recurrence: a span of blocks applied again with shared weights (openai/parameter-golf PR #1344:
blocks 3-5 looped, on from 35 % of training), and the U-Net halves of the resulting layer order."""

from __future__ import annotations


def logical_layers(layers: int, start: int = 0, end: int = 0, loops: int = 0) -> list[int]:
    """The physical block of each logical layer: blocks 0..start-1, the span [start, end] 1 + loops
    times, then blocks end+1..layers-1. loops = 0 is the plain order 0..layers-1."""
    if loops < 0:
        raise ValueError(f"recurrence loops must be >= 0, got {loops}")
    if loops == 0:
        return list(range(layers))
    if not 0 <= start <= end < layers:
        raise ValueError(f"recurrence span [{start}, {end}] must satisfy 0 <= start <= end < layers ({layers})")
    span = list(range(start, end + 1))
    return list(range(start)) + span * (1 + loops) + list(range(end + 1, layers))


def unet_halves(order: list[int]) -> tuple[list[int], list[int]]:
    """(encoder, decoder): the first floor(n/2) logical layers, then the rest."""
    half = len(order) // 2
    return order[:half], order[half:]
