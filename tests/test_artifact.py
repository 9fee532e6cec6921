"""The artifact container: round trips, one failure case per malformed-input class, and fuzzing.

Every malformed file must raise ArtifactError and nothing else, quickly (decoders are bounded).
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgolf.config.pack import PackParams
from pgolf.errors import ArtifactError
from pgolf.pack.artifact import FORMAT_VERSION, MAGIC, PREFIX, PREFIX_BYTES, parse_artifact
from pgolf.pack.codecs import compress, decompress
from pgolf.pack.load import artifact_from_parsed, load_artifact
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import QuantizedModel
from pgolf.quant.scheme import QuantizedTensor

torch.set_num_threads(1)
FUZZ_EXAMPLES = 1000


def tiny_quantized(seed: int = 0) -> QuantizedModel:
    g = torch.Generator().manual_seed(seed)
    q = {}
    for name, group, bits, shape in [("blocks.0.attn.c_q.weight", "attention", 6, (16, 32)), ("blocks.0.mlp.fc.weight", "mlp", 4, (32, 16)), ("wte.weight", "embedding", 8, (24, 16))]:
        qmax = 2 ** (bits - 1) - 1
        symbols = torch.clamp(torch.round(torch.randn(shape, generator=g) * qmax / 4), -qmax, qmax).to(torch.int8)
        q[name] = QuantizedTensor(name, group, bits, symbols, (torch.rand(shape[0], generator=g) * 0.01 + 1e-3).half(), "float32")
    plain = {"blocks.0.gain": torch.randn(32, generator=g).half(), "step": torch.tensor([7], dtype=torch.int64), "bf": torch.randn(5, generator=g).bfloat16()}
    dtypes = {name: "float32" for name in q} | {"blocks.0.gain": "float32", "step": "int64", "bf": "bfloat16"}
    return QuantizedModel({"vocab_size": 24, "n_layer": 1}, q, plain, dtypes, {"lm_head.weight": "wte.weight"}, [])


QM = tiny_quantized()


def with_near_duplicate_rows(qm: QuantizedModel) -> QuantizedModel:
    """`qm` with half the rows of its 6-bit matrix close to its first row (row references pay)."""
    name = "blocks.0.attn.c_q.weight"
    qt = qm.quantized[name]
    q = qt.q.clone()
    noise = torch.randint(-1, 2, (8, q.shape[1]), generator=torch.Generator().manual_seed(1)).to(torch.int8)
    q[8:] = torch.clamp(q[0] + noise, -31, 31)
    return QuantizedModel(qm.model_config, {**qm.quantized, name: QuantizedTensor(name, qt.group, qt.bits, q, qt.scale, qt.dtype)}, qm.passthrough, qm.dtypes, qm.aliases, [])


QM_REFS = with_near_duplicate_rows(QM)
VARIANTS = {
    (coder, side): pack_model(QM, PackParams(compressor=coder, side_codec=side, distribution=dist, layout=layout, ans_clusters=clusters), {"note": "test"}).data
    for coder, side, dist, layout, clusters in [
        ("ans", "brotli", "group", "row", 1), ("best", "lzma", "role", "column", 4), ("ans", "raw", "tensor", "column", 8), ("zstd", "lzma", "group", "column", 1),
        ("lzma", "zstd", "group", "row", 1), ("raw", "raw", "group", "row", 1), ("brotli", "brotli", "role", "row", 1),
    ]
}
VARIANTS[("refs", "brotli")] = pack_model(QM_REFS, PackParams(compressor="ans", row_refs=True, ans_clusters=4, layout="column"), {"note": "test"}).data
EXPECTED = {variant: (QM_REFS if variant[0] == "refs" else QM).state_dict() for variant in VARIANTS}
GOOD = VARIANTS[("ans", "brotli")]


def split(data: bytes) -> tuple[dict, bytes]:
    _, _, _, stored_len, header_len, _, _ = PREFIX.unpack_from(data, 0)
    return json.loads(decompress(data[PREFIX_BYTES : PREFIX_BYTES + stored_len], "brotli", header_len)), data[PREFIX_BYTES + stored_len :]


def resign(header: dict, payload: bytes, version: int = FORMAT_VERSION, flags: int = 0, stored: bytes | None = None) -> bytes:
    """A container with valid prefix/header checksums around any header object (no validation),
    or around `stored` header bytes as they are."""
    raw = json.dumps(header).encode()
    stored = compress(raw, "brotli", 5) if stored is None else stored
    prefix = PREFIX.pack(MAGIC, version, flags, len(stored), len(raw), zlib.crc32(stored), len(payload))
    return prefix + struct.pack("<I", zlib.crc32(prefix)) + stored + payload


def offsets(header: dict) -> list[int]:
    """Where each stream starts in the payload."""
    starts, at = [], 0
    for stream in header["streams"]:
        starts.append(at)
        at += stream["length"]
    return starts


def load(data: bytes):
    return artifact_from_parsed(parse_artifact(data))


def reject(data: bytes, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        load(data)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_bit_for_bit(variant):
    art = load(VARIANTS[variant])
    expected = EXPECTED[variant]
    assert set(art.tensors) == set(expected)
    for name, tensor in expected.items():
        assert art.tensors[name].dtype == tensor.dtype
        assert torch.equal(art.tensors[name], tensor), name
    assert art.model_config == QM.model_config
    assert art.tensors["lm_head.weight"] is art.tensors["wte.weight"]


def test_the_reference_variant_stores_row_references():
    header, _ = split(VARIANTS[("refs", "brotli")])
    assert [e["name"] for e in header["tensors"] if e["role"] == "refs"] == ["blocks.0.attn.c_q.weight"]


def test_writing_is_deterministic():
    params = PackParams(compressor="ans", side_codec="brotli", distribution="group", layout="row", ans_clusters=1)
    assert pack_model(tiny_quantized(), params, {"note": "test"}).data == GOOD


def test_load_from_file_and_missing_file(tmp_path):
    path = tmp_path / "a.pgolf"
    path.write_bytes(GOOD)
    assert load_artifact(path).model_config["vocab_size"] == 24
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "missing.pgolf")
    with pytest.raises(ArtifactError, match="directory"):
        load_artifact(tmp_path)


def test_bad_magic():
    reject(b"NOTPGOLF" + GOOD[8:], "bad magic")


def test_bad_version_and_flags():
    header, payload = split(GOOD)
    reject(resign(header, payload, version=FORMAT_VERSION + 1), "version")
    reject(resign(header, payload, flags=1), "flags")


def test_truncated_and_trailing():
    reject(GOOD[:10], "truncated")
    reject(GOOD[:-1], "truncated")
    reject(GOOD + b"\0", "trailing")


def test_checksums():
    header, payload = split(GOOD)
    corrupt_prefix = bytearray(GOOD)
    corrupt_prefix[12] ^= 1
    reject(bytes(corrupt_prefix), "prefix checksum")
    corrupt_header = bytearray(GOOD)
    corrupt_header[PREFIX_BYTES + 5] ^= 0x20
    reject(bytes(corrupt_header), "header checksum")
    reject(resign(header, payload[:-1] + bytes([payload[-1] ^ 1])), "checksum mismatch")


def edited(path: list, value) -> bytes:
    header, payload = split(GOOD)
    node = header
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return resign(header, payload)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (["tensors", 0, "shape"], [16, 33], "counts|holds|decode|symbols"),
        (["tensors", 0, "shape"], [-1, 32], "dimension"),
        (["tensors", 0, "shape"], [1 << 20, 1 << 20], "elements"),
        (["tensors", 3, "shape"], [17], "scale shape"),
        (["tensors", 0, "dtype"], "object", "dtype"),
        (["tensors", 0, "stream"], 99, "stream 99"),
        (["tensors", 3, "stream"], 0, "mixes"),
        (["tensors", 0, "bits"], 9, "bits"),
        (["tensors", 0, "bits"], 2, "symbols outside"),
        (["tensors", 0, "name"], "", "name"),
        (["tensors", 0, "extra"], 1, "extra"),
        (["streams", 0, "coder"], "gzip", "unknown coder"),
        (["streams", 0, "length"], 10**12, "covers"),
        (["streams", 0, "shuffle"], 2, "not shuffled"),
        (["streams", 3, "column"], True, "column-major"),
        (["streams", 3, "shuffle"], 4, "item sizes"),
        (["aliases", "lm_head.weight"], "nowhere", "alias"),
        (["model_config_crc32"], -1, "model_config_crc32"),
        (["format"], "safetensors", "format"),
        (["model_config"], [1, 2], "model_config"),
    ],
)
def test_header_field_edits_are_rejected(path, value, match):
    reject(edited(path, value), match)


def test_duplicate_and_missing_scale():
    header, payload = split(GOOD)
    header["tensors"][3]["role"] = "q"
    reject(resign(header, payload), "twice|q tensors")
    header, payload = split(GOOD)
    scale = header["tensors"].pop(3)
    reject(resign(header, payload), "without a scale")


def test_a_stream_without_tensors_is_rejected():
    header, payload = split(GOOD)
    header["streams"].append({"coder": "raw", "length": 0, "crc32": 0})
    reject(resign(header, payload), "holds no tensor")


def test_decompression_bomb_is_bounded():
    """A zstd blob that expands to 64 MiB while the table claims a few hundred bytes: refused, not allocated."""
    header, payload = split(VARIANTS[("lzma", "zstd")])
    index = next(i for i, s in enumerate(header["streams"]) if s["coder"] == "zstd")
    start, stream = offsets(header)[index], header["streams"][index]
    bomb = zstandard.ZstdCompressor(level=1).compress(b"\0" * (64 << 20))
    new_payload = payload[:start] + bomb + payload[start + stream["length"] :]
    stream["length"], stream["crc32"] = len(bomb), zlib.crc32(bomb)
    reject(resign(header, new_payload), "more than")


def test_header_decompression_is_bounded():
    """A stored header that inflates far past the length the prefix declares is refused."""
    header, payload = split(GOOD)
    bomb = compress(json.dumps(header).encode() + b" " * (8 << 20), "brotli", 5)
    reject(resign(header, payload, stored=bomb), "header does not decompress")


def test_tiny_file_cannot_claim_a_huge_constant_tensor():
    """A one-symbol distribution codes any count in 0 bytes: the element cap per file byte stops it."""
    header, payload = split(GOOD)
    q = header["tensors"][0]
    scale = next(e for e in header["tensors"] if e["name"] == q["name"] and e["role"] == "scale")
    q["shape"], scale["shape"] = [1 << 13, 1 << 13], [1 << 13]
    reject(resign(header, payload), "implausible")


def test_absurd_symbol_count_for_ans_is_bounded():
    header, payload = split(GOOD)
    q = header["tensors"][0]
    scale = next(e for e in header["tensors"] if e["name"] == q["name"] and e["role"] == "scale")
    q["shape"], scale["shape"] = [1 << 14, 1 << 14], [1 << 14]
    reject(resign(header, payload), "elements|decode|counts|holds|scale")


def test_every_truncation_and_every_bit_flip_is_rejected():
    """Exhaustive over positions of a small artifact: thousands of cases, all ArtifactError."""
    cases = 0
    for cut in range(len(GOOD)):
        with pytest.raises(ArtifactError):
            parse_artifact(GOOD[:cut])
        cases += 1
    rng = np.random.default_rng(0)
    for pos in range(len(GOOD)):
        flipped = bytearray(GOOD)
        flipped[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(ArtifactError):
            load(bytes(flipped))
        cases += 1
    assert cases == 2 * len(GOOD) > 3000  # the compressed header made the file smaller than format 2's


def only_artifact_errors(data: bytes) -> None:
    try:
        load(data)
    except ArtifactError as exc:
        assert str(exc) and "\n" not in str(exc)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("overwrite"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
)


def apply_mutation(data: bytes, op: tuple) -> bytes:
    kind, pos, arg = op
    pos %= len(data) + 1
    if kind == "flip":
        if pos == len(data):
            return data
        out = bytearray(data)
        out[pos] ^= 1 << arg
        return bytes(out)
    if kind == "cut":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + arg + data[pos:]
    return data[:pos] + arg + data[pos + len(arg) :]


@settings(max_examples=FUZZ_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(variant=st.sampled_from(sorted(VARIANTS)), ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_raw_mutations(variant, ops):
    data = VARIANTS[variant]
    for op in ops:
        data = apply_mutation(data, op)
    only_artifact_errors(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
FIELDS = ["name", "role", "part", "shape", "dtype", "out_dtype", "bits", "stream"]
STREAM_FIELDS = ["coder", "shuffle", "column", "length", "crc32"]


@settings(max_examples=FUZZ_EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    variant=st.sampled_from(sorted(VARIANTS)),
    index=st.integers(0, 50),
    field=st.sampled_from([("tensors", f) for f in FIELDS] + [("streams", f) for f in STREAM_FIELDS]),
    value=st.one_of(json_values, st.integers(-3, 1 << 40), st.lists(st.integers(-2, 1 << 30), max_size=3), st.sampled_from(["ans", "raw", "zstd", "q", "scale", "plain", "extra", "lowrank.u", "int8", "float16", "attention"])),
    payload_flip=st.none() | st.integers(0, 10**6),
)
def test_fuzz_resigned_header_and_payload_edits(variant, index, field, value, payload_flip):
    """Edits with valid checksums reach the schema, table and decoder checks (payload flips get
    their stream's CRC recomputed, so the stream decoders themselves see corrupt blobs)."""
    header, payload = split(VARIANTS[variant])
    table, key = field
    rows = header[table]
    rows[index % len(rows)][key] = value
    if payload_flip is not None and payload:
        pos = payload_flip % len(payload)
        payload = payload[:pos] + bytes([payload[pos] ^ 0x10]) + payload[pos + 1 :]
        at = 0
        for stream in header["streams"]:
            length = stream.get("length")
            if isinstance(length, int) and at <= pos < at + length:
                stream["crc32"] = zlib.crc32(payload[at : at + length])
            at += length if isinstance(length, int) else 0
    only_artifact_errors(resign(header, payload))
