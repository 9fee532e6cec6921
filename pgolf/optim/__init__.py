"""Optimizers: Muon for 2-D block matrices, Adam(W) for the rest, grouped by a table."""

from pgolf.optim.groups import GROUP_TABLE, assign_groups, build_optimizers, set_schedule
from pgolf.optim.muon import Muon, muon_update, nesterov_momentum, newton_schulz

__all__ = ["GROUP_TABLE", "Muon", "assign_groups", "build_optimizers", "muon_update", "nesterov_momentum", "newton_schulz", "set_schedule"]
