"""The byte table behind val_bpb: the challenge's rules, pinned on tokenizers trained here."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import english_docs, trained_processor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgolf.errors import DataError
from pgolf.bytetable import SPACE_PIECE, byte_table, stream_bytes, token_bytes
from pgolf.tokenizer import BOS_ID


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    return trained_processor(tmp_path_factory.mktemp("bytes"), english_docs(), vocab_size=512)


@pytest.fixture(scope="module")
def table(sp):
    return byte_table(sp)


def naive_bytes(sp, ids: list[int]) -> int:
    """The rules written out one token at a time (the first token follows a boundary)."""
    total, prev_boundary = 0, True
    for i in ids:
        boundary = sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
        if boundary:
            cost = 0
        elif sp.is_byte(i):
            cost = 1
        else:
            piece = sp.id_to_piece(i)
            lead = piece.startswith(SPACE_PIECE)
            cost = len(piece.removeprefix(SPACE_PIECE).encode("utf-8")) + (1 if lead and not prev_boundary else 0)
        total += cost
        prev_boundary = boundary
    return total


def doc_bytes(table, sp, text: str) -> int:
    return int(stream_bytes(table, np.array([BOS_ID, *sp.encode(text)])).sum())


def decoded_bytes(sp, text: str) -> int:
    return len(sp.decode(sp.encode(text)).encode("utf-8"))


def test_bytes_table_shapes_dtypes_readonly(sp, table):
    assert table.vocab_size == sp.vocab_size()
    assert table.base_bytes.dtype == np.int16
    assert table.has_leading_space.dtype == bool and table.is_boundary.dtype == bool
    with pytest.raises(ValueError):
        table.base_bytes[5] = 3


def test_bytes_control_tokens_are_zero_byte_boundaries(sp, table):
    for i in (0, 1, 2, 3):  # pad, bos, eos, unk
        assert table.is_boundary[i] and table.base_bytes[i] == 0 and not table.has_leading_space[i]
    assert int(table.is_boundary.sum()) == 4


def test_bytes_byte_fallback_pieces_cost_one_byte(sp, table):
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256
    assert set(table.base_bytes[byte_ids].tolist()) == {1}
    text = "日本語のテキスト 😀 and Ωμέγα"
    ids = sp.encode(text)
    assert sum(sp.is_byte(i) for i in ids) >= 10, "the text should force byte-fallback pieces"
    assert doc_bytes(table, sp, text) == decoded_bytes(sp, text) == len(text.encode("utf-8"))


def test_bytes_leading_space_rule(sp, table):
    word = sp.piece_to_id(f"{SPACE_PIECE}the")
    plain = sp.piece_to_id("a")
    assert table.has_leading_space[word] and not table.has_leading_space[plain]
    after_bos = token_bytes(table, np.array([BOS_ID]), np.array([word]))
    after_token = token_bytes(table, np.array([plain]), np.array([word]))
    assert after_bos.tolist() == [3] and after_token.tolist() == [4]
    space = sp.piece_to_id(SPACE_PIECE)
    assert space != sp.unk_id() and table.base_bytes[space] == 0
    assert token_bytes(table, np.array([plain, BOS_ID]), np.array([space, space])).tolist() == [1, 0]


def test_bytes_document_starting_with_space(sp, table):
    text = "  the leading spaces are normalized away"
    ids = sp.encode(text)
    assert not sp.id_to_piece(ids[0]).startswith(SPACE_PIECE)
    assert doc_bytes(table, sp, text) == decoded_bytes(sp, text) == len(text.strip().encode("utf-8"))


def test_bytes_total_over_documents_equals_decoded_utf8(sp, table):
    docs = english_docs()[:60] + ["naïve café “quoted” — dash… ½ ﬁ", "tabs\tand\nnewlines  collapse", "x"]
    stream = np.concatenate([np.array([BOS_ID, *sp.encode(d)]) for d in docs])
    per_token = stream_bytes(table, stream)
    assert per_token.dtype == np.int64
    assert int(per_token.sum()) == sum(decoded_bytes(sp, d) for d in docs)
    assert int(per_token.sum()) == sum(naive_bytes(sp, [BOS_ID, *sp.encode(d)]) for d in docs)


def test_bytes_token_bytes_matches_naive_rules_on_random_pairs(sp, table):
    rng = np.random.default_rng(0)
    prev = rng.integers(0, sp.vocab_size(), size=2000)
    target = rng.integers(0, sp.vocab_size(), size=2000)
    fast = token_bytes(table, prev, target)
    slow = [naive_bytes(sp, [int(p), int(t)]) - naive_bytes(sp, [int(p)]) for p, t in zip(prev, target)]
    assert fast.tolist() == slow


def test_bytes_token_bytes_rejects_bad_input(table):
    with pytest.raises(ValueError, match="shape"):
        token_bytes(table, np.array([1, 2]), np.array([3]))
    with pytest.raises(DataError, match="vocab size"):
        token_bytes(table, np.array([1]), np.array([table.vocab_size]))
    assert token_bytes(table, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).tolist() == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_bytes_property_table_total_equals_decoded_utf8(sp, table, text):
    assert doc_bytes(table, sp, text) == decoded_bytes(sp, text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list(" \t\n\u00a0\u3000\u2581ab.é日😀\u0301\u00a8ﬁ\x00")), max_size=40))
def test_bytes_property_whitespace_and_normalization_edges(sp, table, text):
    assert doc_bytes(table, sp, text) == decoded_bytes(sp, text)
