"""Shard IO: the official binary layout, and a failure for each malformed-file class."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.data.shards import (
    SHARD_HEADER_BYTES,
    SHARD_MAGIC,
    SHARD_VERSION,
    encode_shard,
    list_shards,
    load_tokens,
    read_header,
    read_shard,
    shard_name,
    split_documents,
    write_shard,
)
from pgolf.errors import ShardError


def test_shards_layout_is_the_official_one(tmp_path):
    path = write_shard(tmp_path / "fineweb_val_000000.bin", np.array([1, 7, 65535, 0]))
    data = path.read_bytes()
    header = np.frombuffer(data[:SHARD_HEADER_BYTES], dtype="<i4")
    assert SHARD_MAGIC == 20240520 and SHARD_VERSION == 1 and SHARD_HEADER_BYTES == 1024
    assert header[:3].tolist() == [20240520, 1, 4] and not header[3:].any()
    assert data[SHARD_HEADER_BYTES:] == bytes([1, 0, 7, 0, 255, 255, 0, 0])
    assert len(data) == 1024 + 2 * 4


@settings(max_examples=50, deadline=None)
@given(tokens=st.lists(st.integers(0, 65535), max_size=300))
def test_shards_roundtrip(tmp_path_factory, tokens):
    path = write_shard(tmp_path_factory.mktemp("rt") / "s.bin", np.array(tokens, dtype=np.int64))
    assert read_header(path) == len(tokens)
    assert read_shard(path).tolist() == tokens


def test_shards_zero_token_shard_is_valid(tmp_path):
    path = write_shard(tmp_path / "s.bin", np.zeros(0, dtype=np.uint16))
    assert read_shard(path).size == 0


def _header_with(tmp_path, index: int, value: int):
    data = bytearray(encode_shard(np.arange(10)))
    data[index * 4 : index * 4 + 4] = np.int32(value).tobytes()
    path = tmp_path / "s.bin"
    path.write_bytes(bytes(data))
    return path


def test_shards_bad_magic(tmp_path):
    with pytest.raises(ShardError, match="magic"):
        read_shard(_header_with(tmp_path, 0, 20240521))


def test_shards_bad_version(tmp_path):
    with pytest.raises(ShardError, match="version"):
        read_shard(_header_with(tmp_path, 1, 2))


def test_shards_negative_count(tmp_path):
    with pytest.raises(ShardError, match="negative"):
        read_shard(_header_with(tmp_path, 2, -1))


def test_shards_truncated(tmp_path):
    path = tmp_path / "s.bin"
    path.write_bytes(encode_shard(np.arange(10))[:-1])
    with pytest.raises(ShardError, match="truncated"):
        read_shard(path)


def test_shards_trailing_bytes(tmp_path):
    path = tmp_path / "s.bin"
    path.write_bytes(encode_shard(np.arange(10)) + b"\0\0")
    with pytest.raises(ShardError, match="trailing"):
        read_shard(path)


@pytest.mark.parametrize(("size", "message"), [(0, "empty file"), (100, "truncated header"), (SHARD_HEADER_BYTES - 1, "truncated header")])
def test_shards_zero_byte_or_short_header(tmp_path, size, message):
    path = tmp_path / "s.bin"
    path.write_bytes(encode_shard(np.arange(600))[:size])
    with pytest.raises(ShardError, match=message):
        read_shard(path)


def test_shards_missing_file(tmp_path):
    with pytest.raises(ShardError):
        read_shard(tmp_path / "absent.bin")


def test_shards_encode_rejects_bad_tokens():
    with pytest.raises(ShardError, match="65535"):
        encode_shard(np.array([70000]))
    with pytest.raises(ShardError, match="65535"):
        encode_shard(np.array([-1]))
    with pytest.raises(ShardError, match="1-D"):
        encode_shard(np.zeros((2, 2), dtype=np.uint16))
    with pytest.raises(ShardError, match="integers"):
        encode_shard(np.array([1.0]))


def test_shards_list_in_index_order(tmp_path):
    for split, index in [("val", 1), ("val", 0), ("train", 0), ("train", 2), ("train", 1)]:
        write_shard(tmp_path / shard_name(split, index), np.array([1, index]))
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "fineweb_val_1.bin").write_bytes(b"")  # not the official name: ignored
    assert [p.name for p in list_shards(tmp_path, "val")] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert [p.name for p in list_shards(tmp_path, "train")] == [shard_name("train", i) for i in range(3)]
    assert load_tokens(list_shards(tmp_path, "train")).tolist() == [1, 0, 1, 1, 1, 2]
    assert load_tokens([]).size == 0


def test_shards_non_contiguous_indices(tmp_path):
    write_shard(tmp_path / shard_name("train", 0), np.array([1]))
    write_shard(tmp_path / shard_name("train", 2), np.array([1]))
    with pytest.raises(ShardError, match="not contiguous"):
        list_shards(tmp_path, "train")
    write_shard(tmp_path / shard_name("val", 1), np.array([1]))
    with pytest.raises(ShardError, match="expected index 0"):
        list_shards(tmp_path, "val")


def test_shards_list_errors(tmp_path):
    with pytest.raises(ShardError, match="not found"):
        list_shards(tmp_path / "absent", "val")
    with pytest.raises(ValueError):
        list_shards(tmp_path, "test")
    assert list_shards(tmp_path, "val") == []


def test_shards_split_documents():
    docs = split_documents(np.array([1, 5, 6, 1, 1, 7], dtype=np.uint16), bos_id=1)
    assert [d.tolist() for d in docs] == [[1, 5, 6], [1], [1, 7]]
    assert split_documents(np.zeros(0, dtype=np.uint16), bos_id=1) == []
    with pytest.raises(ShardError, match="does not start with BOS"):
        split_documents(np.array([5, 1, 6]), bos_id=1)
