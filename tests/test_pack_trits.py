"""Issue 15 items 4/5, packing side: base-3 trits (5 per byte) and Gray-coded bit packing as
`pack.transform`, and artifacts with per-group scales and the midrise grid, round-tripped."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.pack import PackParams
from pgolf.errors import ArtifactError
from pgolf.pack.artifact import PREFIX, PREFIX_BYTES, crc32, encode_artifact, parse_artifact
from pgolf.pack.codecs import compress, decompress
from pgolf.pack.load import artifact_from_parsed
from pgolf.pack.pack import pack_model
from pgolf.pack.transforms import SYMBOL_TRANSFORMS, bits_length, decode_bits, decode_trits, encode_bits, encode_trits, trits_length
from pgolf.quant.apply import QuantizedModel
from pgolf.quant.grids import GRIDS
from pgolf.quant.scheme import QuantizedTensor

SYM, MID = GRIDS["symmetric"], GRIDS["midrise"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-1, 1), max_size=64))
def test_trits_round_trip_every_value_and_length(values):
    flat = np.array(values, dtype=np.int8)
    data = encode_trits(flat, 2, SYM)
    assert data.dtype == np.uint8 and data.size == -(-len(values) // 5)
    assert data.size == 0 or int(data.max()) <= 242
    np.testing.assert_array_equal(decode_trits(data, len(values), 2, SYM), flat)


def test_trits_are_base_3_digits_low_first():
    assert encode_trits(np.array([1, 0, -1, -1, 1], dtype=np.int8), 2, SYM).tolist() == [2 + 3 * 1 + 0 + 0 + 81 * 2]
    assert encode_trits(np.array([1, 1], dtype=np.int8), 2, SYM).tolist() == [2 + 3 * 2]  # padding digits are 0


@pytest.mark.parametrize("data, n, match", [(np.array([243], dtype=np.uint8), 5, "at most 242"), (np.array([1, 2], dtype=np.uint8), 3, "cannot hold"),
                                             (np.array([2 + 81], dtype=np.uint8), 2, "padding")])
def test_trits_reject_bytes_no_trits_make(data, n, match):
    with pytest.raises(ArtifactError, match=match):
        decode_trits(data, n, 2, SYM)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([2, 3, 4, 5, 6, 7, 8]), st.sampled_from(["symmetric", "midrise"]), st.data())
def test_bits_round_trip_every_level(bits, grid, data):
    g = GRIDS[grid]
    values = data.draw(st.lists(st.integers(g.lo(bits), g.hi(bits)), max_size=40))
    flat = np.array(values, dtype=np.int8)
    packed = encode_bits(flat, bits, g)
    assert packed.size == bits_length(len(values), bits)
    np.testing.assert_array_equal(decode_bits(packed, len(values), bits, g), flat)


def test_two_bit_midrise_levels_are_gray_coded_four_per_byte():
    # levels -3,-1,+1,+3 (symbols -2..1) -> 00 01 11 10: neighbours differ in one bit
    assert encode_bits(np.array([-2, -1, 0, 1], dtype=np.int8), 2, MID).tolist() == [0b00_01_11_10]
    codes = [int(encode_bits(np.array([q] * 4, dtype=np.int8), 2, MID)[0]) & 0b11 for q in range(-2, 2)]
    assert all(bin(a ^ b).count("1") == 1 for a, b in zip(codes, codes[1:]))


def test_bits_reject_a_code_outside_the_symmetric_grid():
    # symmetric 2 bits has levels -1, 0, 1 (u = 0, 1, 2; gray 00, 01, 11); gray 10 is u = 3: no level
    assert decode_bits(np.array([0b11_000000], dtype=np.uint8), 1, 2, SYM).tolist() == [1]
    with pytest.raises(ArtifactError, match="no level"):
        decode_bits(np.array([0b10_000000], dtype=np.uint8), 1, 2, SYM)


def ternary_model(rows: int = 24, cols: int = 37, group: int = 8, seed: int = 0) -> QuantizedModel:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-1, 2, (rows, cols), generator=gen, dtype=torch.int8)
    groups = -(-cols // group)
    scale = (torch.rand(rows, groups, generator=gen) + 0.1).half()
    qt = QuantizedTensor("blocks.0.mlp.fc.weight", "mlp", 2, q, scale, "float32", {}, group)
    emb = QuantizedTensor("tok_emb.weight", "embedding", 8, torch.randint(-127, 128, (16, 8), generator=gen, dtype=torch.int8), torch.rand(16).half() + 0.01, "float32")
    return QuantizedModel({}, {qt.name: qt, emb.name: emb}, {"norm": torch.ones(3)}, {qt.name: "float32", emb.name: "float32", "norm": "float32"})


@pytest.mark.parametrize("compressor", ["raw", "lzma", "ans", "best"])
@pytest.mark.parametrize("transform", ["trits", "bits", "none"])
def test_artifact_round_trips_per_group_scales_through_each_transform(compressor, transform):
    qm = ternary_model()
    packed = pack_model(qm, PackParams(compressor=compressor, transform=transform, row_refs=False, reference_brotli=False))
    parsed = parse_artifact(packed.data)
    streams = [s.transform for s in parsed.header.streams]
    assert streams.count(None if transform == "none" else transform) >= 1
    if transform == "trits":  # the 8-bit embedding's stream is left as is
        assert streams[:2] == ["trits", None]
    if compressor == "raw" and transform == "trits":
        assert parsed.header.streams[0].length == trits_length(24 * 37) == 178
    tensors = artifact_from_parsed(parsed).tensors
    for name, qt in qm.quantized.items():
        torch.testing.assert_close(tensors[name], qt.dequantize(), rtol=0, atol=0)


def test_midrise_grid_round_trips_through_the_artifact():
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(-2, 2, (8, 20), generator=gen, dtype=torch.int8)
    qt = QuantizedTensor("blocks.0.attn.c_q.weight", "attention", 2, q, torch.full((8, 4), 0.5).half(), "float32", {}, 5, "midrise")
    assert sorted(torch.unique(qt.dequantize()).tolist()) == [-0.75, -0.25, 0.25, 0.75]
    qm = QuantizedModel({}, {qt.name: qt}, {}, {qt.name: "float32"})
    packed = pack_model(qm, PackParams(compressor="raw", transform="bits", reference_brotli=False))
    parsed = parse_artifact(packed.data)
    assert parsed.header.streams[0].transform == "bits" and parsed.header.streams[0].length == 40  # 160 symbols, 4 per byte
    assert parsed.header.tensors[0].grid == "midrise" and parsed.header.tensors[0].scale_group == 5
    torch.testing.assert_close(artifact_from_parsed(parsed).tensors[qt.name], qt.dequantize(), rtol=0, atol=0)


def test_default_artifact_header_has_no_new_fields():
    qm = ternary_model()
    qt = qm.quantized["tok_emb.weight"]
    plain = QuantizedModel({}, {qt.name: qt}, {}, {qt.name: "float32"})
    header = parse_artifact(pack_model(plain, PackParams(reference_brotli=False)).data).header
    dumped = json.dumps(header.model_dump(by_alias=True, exclude_none=True))
    assert "transform" not in dumped and "scale_group" not in dumped and "grid" not in dumped


def rewrite(data: bytes, edit) -> bytes:
    """`data` with its header JSON edited by `edit(header_dict)`, prefix and CRCs recomputed."""
    magic, version, flags, stored_len, header_len, _, payload_len = PREFIX.unpack_from(data, 0)
    raw = decompress(data[PREFIX_BYTES : PREFIX_BYTES + stored_len], "brotli", header_len)
    header = json.loads(raw)
    edit(header)
    raw = json.dumps(header).encode()
    stored = compress(raw, "brotli", 11)
    prefix = PREFIX.pack(magic, version, flags, len(stored), len(raw), crc32(stored), payload_len)
    return prefix + struct.pack("<I", crc32(prefix)) + stored + data[PREFIX_BYTES + stored_len :]


def set_path(path, value):
    def edit(header):
        node = header
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


DELETE = object()


@pytest.mark.parametrize("path, value, match", [
    (["streams", 0, "transform"], "base7", "unknown transform"),
    (["tensors", 0, "grid"], "lattice", "unknown grid"),
    (["tensors", 0, "scale_group"], 0, "greater than or equal to 1"),
    (["tensors", 0, "scale_group"], DELETE, "scale shape"),
    (["tensors", 0, "scale_group"], 16, "scale shape"),
    (["tensors", 1, "bits"], 8, "share bits"),
    (["streams", -1, "transform"], "trits", "only symbol streams"),
])
def test_malformed_low_bit_tables_give_one_line_artifact_errors(path, value, match):
    qm = ternary_model()
    data = pack_model(qm, PackParams(compressor="raw", transform="trits", distribution="role", row_refs=False, reference_brotli=False)).data
    if path[0] == "tensors" and path[2] == "bits":  # put both q tensors in stream 0
        data = rewrite(data, lambda h: h["tensors"][1].update(stream=0))
    bad = rewrite(data, set_path(path, value))
    with pytest.raises(ArtifactError, match=match) as info:
        artifact_from_parsed(parse_artifact(bad))
    assert "\n" not in str(info.value)


def test_a_forged_trits_payload_is_an_artifact_error():
    qm = ternary_model()
    data = bytearray(pack_model(qm, PackParams(compressor="raw", transform="trits", row_refs=False, reference_brotli=False)).data)
    parsed = parse_artifact(bytes(data))
    start = len(data) - sum(s.length for s in parsed.header.streams)
    data[start] = 250  # not 5 trits
    forged = rewrite(bytes(data), lambda h: h["streams"][0].update(crc32=crc32(bytes(data[start : start + h["streams"][0]["length"]]))))
    with pytest.raises(ArtifactError, match="at most 242"):
        artifact_from_parsed(parse_artifact(forged))


def test_transform_registry_is_what_pack_params_accept():
    assert set(SYMBOL_TRANSFORMS) == {"trits", "bits"}
    with pytest.raises(ValueError, match="transform"):
        PackParams(transform="base7")
    assert PackParams().transform == "none"
