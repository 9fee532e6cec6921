"""Optimizers: Muon for 2-D block matrices, Adam(W) for the rest, grouped by a table; the muP
coordinate check that trains with them."""

from pgolf.optim.coord_check import activation_rms, coord_check, width_exponents
from pgolf.optim.groups import GROUP_TABLE, assign_groups, build_optimizers, set_schedule
from pgolf.optim.muon import UPDATE_SCALES, Muon, muon_update, nesterov_momentum, newton_schulz

__all__ = [
    "GROUP_TABLE", "UPDATE_SCALES", "Muon", "activation_rms", "assign_groups", "build_optimizers", "coord_check",
    "muon_update", "nesterov_momentum", "newton_schulz", "set_schedule", "width_exponents",
]
