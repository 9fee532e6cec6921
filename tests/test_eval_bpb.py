"""val_bpb arithmetic, normalized scoring, and the byte accounting of the validation stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_helpers import BOS, byte_table, random_stream, random_tokens

from pgolf.errors import DataError
from pgolf.eval.bpb import ValStream, log_mass, new_nll_array, stream_from_tokens, summarize, token_nll
from pgolf.bytetable import stream_bytes


def test_summarize_is_the_challenge_formula() -> None:
    stream = ValStream(np.array([BOS, 9, 10, BOS, 11]), np.array([0, 2, 3, 0, 4]), BOS)
    nll = np.array([np.nan, 1.0, 2.0, 0.5, 0.25])
    result = summarize(stream, nll, seconds=1.5)
    assert result.scored_tokens == 4
    assert result.scored_bytes == 9
    assert result.val_loss == pytest.approx(3.75 / 4)
    assert result.val_bpb == pytest.approx(3.75 / math.log(2) / 9)
    assert result.to_dict()["seconds"] == 1.5


def test_scored_bytes_equal_the_stream_byte_total() -> None:
    stream = random_stream([5, 17, 1, 40], seed=3)
    nll = new_nll_array(stream)
    nll[1:] = 1.0
    table = byte_table()
    assert summarize(stream, nll, 0.0).scored_bytes == int(stream_bytes(table, stream.tokens).sum())


def test_leading_space_byte_only_after_a_non_boundary() -> None:
    # id 9 has a leading space (base 1 + 9 % 3 = 1): after BOS it costs 1 byte, after id 8 it costs 2.
    bytes_ = stream_from_tokens(np.array([BOS, 9, 8, 9]), byte_table(), BOS).target_bytes
    assert bytes_.tolist() == [0, 1, 3, 2]


def test_token_nll_matches_cross_entropy_and_is_normalized() -> None:
    logits = torch.randn(3, 7, 11) * 5
    targets = torch.randint(0, 11, (3, 7))
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="none").reshape(3, 7)
    assert torch.allclose(token_nll(logits, targets), expected.double(), atol=1e-5)
    assert token_nll(logits, targets).dtype == torch.float64
    assert log_mass(logits).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("nll_edit", "message"),
    [
        (lambda a: a.__setitem__(3, np.nan), "never scored"),
        (lambda a: a.__setitem__(0, 1.0), "position 0"),
        (lambda a: a.__setitem__(2, np.inf), "infinite"),
    ],
)
def test_summarize_refuses_incomplete_scoring(nll_edit, message: str) -> None:
    stream = random_stream([6, 6])
    nll = new_nll_array(stream)
    nll[1:] = 0.7
    nll_edit(nll)
    with pytest.raises(DataError, match=message):
        summarize(stream, nll, 0.0)


def test_stream_must_start_with_bos_and_have_targets() -> None:
    tokens = random_tokens([4])
    with pytest.raises(DataError, match="start with BOS"):
        ValStream(tokens[1:], np.zeros(tokens.size - 1, dtype=np.int64), BOS)
    with pytest.raises(DataError, match="nothing to score"):
        ValStream(tokens[:1], np.zeros(1, dtype=np.int64), BOS)
    with pytest.raises(DataError, match="shapes"):
        ValStream(tokens, np.zeros(2, dtype=np.int64), BOS)


def test_all_boundary_stream_has_undefined_bpb() -> None:
    stream = ValStream(np.array([BOS, BOS, BOS]), np.zeros(3, dtype=np.int64), BOS)
    nll = np.array([np.nan, 0.1, 0.1])
    with pytest.raises(DataError, match="no bytes"):
        summarize(stream, nll, 0.0)
