"""Train/val overlap audit: a validation document anywhere in the training shards fails the audit,
wherever it lies (inside a shard, across a shard boundary, last in the data); clean data passes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgolf.data.shards import shard_name, write_shard
from pgolf.errors import AuditError
from pgolf.overlap import check_overlap, document_spans, fingerprint, fingerprint_spans

BOS = 1


def _stream(docs: list[list[int]]) -> np.ndarray:
    return np.array([t for d in docs for t in [BOS, *d]], dtype=np.uint16)


def _val_docs(docs: list[list[int]]) -> list[np.ndarray]:
    return [np.array([BOS, *d], dtype=np.uint16) for d in docs]


def _write_train(root: Path, stream: np.ndarray, cuts: list[int]) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [write_shard(root / shard_name("train", i), stream[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def _random_docs(rng: np.random.Generator, n: int, low: int = 1, high: int = 30) -> list[list[int]]:
    return [rng.integers(2, 500, size=int(rng.integers(low, high))).tolist() for _ in range(n)]


def test_document_spans_leave_out_head_and_tail():
    tokens = np.array([7, 8, BOS, 5, 6, BOS, BOS, 9, BOS, 4], dtype=np.uint16)
    starts, ends = document_spans(tokens, BOS)
    assert starts.tolist() == [3, 6, 7] and ends.tolist() == [5, 6, 8]
    prints, kept, kept_ends = fingerprint_spans(tokens, starts, ends, min_tokens=1)
    assert kept.tolist() == [3, 7] and kept_ends.tolist() == [5, 8]  # the empty document is skipped
    assert prints.tolist() == [fingerprint(np.array([5, 6])), fingerprint(np.array([9]))]
    assert fingerprint(np.array([5, 6])) != fingerprint(np.array([6, 5]))


def test_clean_data_passes_and_counts_every_training_document(tmp_path):
    rng = np.random.default_rng(0)
    train, val = _random_docs(rng, 60), _random_docs(rng, 10, low=31, high=40)  # lengths never equal
    paths = _write_train(tmp_path, _stream(train), [37, 180, 181, 400])
    result = check_overlap(_val_docs(val), paths, BOS)
    assert result.val_docs_checked == 10 and result.train_docs_checked == 60
    assert result.train_tokens_scanned == len(_stream(train)) and result.train_files == 5


@pytest.mark.parametrize("where", ["inside", "straddling", "last", "first"])
def test_a_planted_validation_document_fails_naming_it(tmp_path, where):
    rng = np.random.default_rng(1)
    train, val = _random_docs(rng, 40), _random_docs(rng, 8, low=31, high=40)
    planted = 5
    at = {"inside": 20, "straddling": 20, "last": 40, "first": 0}[where]
    train.insert(at, val[planted])
    stream = _stream(train)
    doc_start = len(_stream(train[:at]))
    cuts = [doc_start + 10] if where == "straddling" else [len(stream) // 3]
    if where == "straddling":
        cuts.append(doc_start + 12)  # through a tiny shard holding only a piece of it
    paths = _write_train(tmp_path, stream, cuts)
    with pytest.raises(AuditError, match=r"^validation document 5 also appears in the training data \(fineweb_train_"):
        check_overlap(_val_docs(val), paths, BOS)


def test_reports_the_first_validation_document_and_how_many_more(tmp_path):
    rng = np.random.default_rng(2)
    train, val = _random_docs(rng, 30), _random_docs(rng, 8, low=31, high=40)
    train[3:3] = [val[6], val[2], val[4]]
    paths = _write_train(tmp_path, _stream(train), [50])
    with pytest.raises(AuditError, match=r"validation document 2 .*; 2 more validation documents"):
        check_overlap(_val_docs(val), paths, BOS, describe=lambda i: f"validation document {i}")


def test_min_tokens_skips_short_documents(tmp_path):
    train = [[5, 6], [7, 8, 9, 10]]
    paths = _write_train(tmp_path, _stream(train), [])
    check_overlap(_val_docs([[5, 6]]), paths, BOS, min_tokens=3)  # too short to check: passes
    with pytest.raises(AuditError):
        check_overlap(_val_docs([[5, 6]]), paths, BOS, min_tokens=2)


def test_a_prefix_is_not_a_match(tmp_path):
    paths = _write_train(tmp_path, _stream([[5, 6, 7, 8]]), [])
    check_overlap(_val_docs([[5, 6, 7]]), paths, BOS)  # a val document that is a prefix of a training one


def test_workers_give_the_same_result(tmp_path):
    rng = np.random.default_rng(3)
    train, val = _random_docs(rng, 80), _random_docs(rng, 6, low=31, high=40)
    paths = _write_train(tmp_path, _stream(train), [100, 300, 500, 700])
    assert check_overlap(_val_docs(val), paths, BOS, workers=2) == check_overlap(_val_docs(val), paths, BOS, workers=1)
    train.insert(50, val[3])
    shutil.rmtree(tmp_path)
    paths = _write_train(tmp_path, _stream(train), [100, 300, 500, 700])
    with pytest.raises(AuditError, match="validation document 3"):
        check_overlap(_val_docs(val), paths, BOS, workers=2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    n_train=st.integers(0, 25),
    planted=st.lists(st.integers(0, 5), max_size=3),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=5),
)
def test_detected_exactly_when_planted_wherever_the_shards_are_cut(tmp_path_factory, seed, n_train, planted, cuts):
    rng = np.random.default_rng(seed)
    val = [[400 + i, *d] for i, d in enumerate(_random_docs(rng, 6, low=1, high=8))]  # distinct first tokens
    train = [[2, *d] for d in _random_docs(rng, n_train, low=0, high=8)]  # never equal to a val doc
    for j, v in enumerate(planted):
        train.insert(int(rng.integers(0, len(train) + 1)), val[v])
    stream = _stream(train)
    root = tmp_path_factory.mktemp("overlap")
    paths = _write_train(root, stream, [int(c * len(stream)) for c in cuts]) if len(stream) else []
    if not paths:
        return
    if planted:
        with pytest.raises(AuditError, match=f"^validation document {min(planted)} also appears"):
            check_overlap(_val_docs(val), paths, BOS)
    else:
        result = check_overlap(_val_docs(val), paths, BOS)
        assert result.train_docs_checked == sum(1 for d in train if len(d) >= 1)

