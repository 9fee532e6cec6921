"""The record stack's training options; first, the default run they must leave unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pgolf.dist import DistInfo
from pgolf.train.loop import train
from train_helpers import make_shards, tiny_params

torch.set_num_threads(1)
CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))


# -- the default run, frozen ------------------------------------------------------------------------

def test_default_run_is_bit_for_bit_the_code_at_4de722e(shards, tmp_path):
    """Every new option off must leave the numerics exactly as they were. These are the losses the
    code at commit 4de722e (before any record-stack option was wired in) gives for this 30-step tiny
    run with one thread, computed from that commit's tree and frozen here. 30 steps rather than 12:
    a reordering of float sums (e.g. computing c_v before c_q and c_k, which changes the order in
    which the input's gradient accumulates) first shows in the last bits after ~20 steps."""
    result = train(tiny_params(tmp_path, iterations=30), shards, tmp_path / "out", CPU)
    assert (result.train_loss, result.val_loss) == (1.1536898612976074, 1.154665768146515)
