"""Symbol streams: the ans run coder (round trip, corrupt input), its class fit, stream layouts
(role / column-major) on a real GPT, and whole-model accounting (container overhead at several
scales, the artifact against the order-0 entropy bound)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.model import ModelParams
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.errors import ArtifactError
from pgolf.model import build_model
from pgolf.pack.accounting import entropy_bound
from pgolf.pack.artifact import parse_artifact
from pgolf.pack.cluster_fit import fit_classes
from pgolf.pack.entropy import order0_entropy_bits
from pgolf.pack.load import artifact_from_parsed
from pgolf.pack.modelconfig import compact_model_config, expand_model_config
from pgolf.pack.pack import pack_model
from pgolf.pack.rowrefs import dereference, reference
from pgolf.pack.runs import decode_runs, encode_runs
from pgolf.quant.apply import QuantizedModel, quantize_state
from pgolf.quant.scheme import QuantizedTensor

torch.set_num_threads(1)
TINY = {"vocab_size": 64, "layers": 2, "width": 32, "heads": 2, "kv_heads": 1}


@st.composite
def stream_of_matrices(draw):
    """1-3 int8 matrices (some empty) and a class per run, K in 1..5."""
    clusters = draw(st.integers(1, 5))
    mats, classes = [], []
    for seed in range(draw(st.integers(1, 3))):
        rows, cols = draw(st.integers(0, 9)), draw(st.integers(0, 9))
        spread = draw(st.integers(0, 60))
        gen = np.random.default_rng(draw(st.integers(0, 2**16)) + seed)
        mats.append(np.clip(np.round(gen.standard_normal((rows, cols)) * spread / 3), -63, 63).astype(np.int8))
        classes.append(gen.integers(0, clusters, rows).astype(np.uint8))
    return mats, classes, clusters


@settings(max_examples=80, deadline=None)
@given(stream_of_matrices())
def test_runs_coder_round_trips_any_matrices_and_classes(case):
    mats, classes, clusters = case
    blob = encode_runs(mats, classes, clusters)
    out = decode_runs(blob, [m.shape for m in mats])
    assert len(out) == len(mats)
    for got, want in zip(out, mats):
        assert got.dtype == np.int8 and np.array_equal(got, want)


def column_spread_matrix(rows: int = 256, cols: int = 96, seed: int = 0) -> np.ndarray:
    """Symbols whose spread differs by column (as GPTQ'd weights' input features do), stored
    column-major: the runs (rows here) are the weight's columns."""
    gen = np.random.default_rng(seed)
    w = np.clip(np.round(gen.laplace(size=(rows, cols)) * np.where(narrow_columns(cols), 0.6, 6.0)), -31, 31).astype(np.int8)
    return np.ascontiguousarray(w.T)


def narrow_columns(cols: int) -> np.ndarray:
    return np.arange(cols) % 3 == 0


def test_decoding_with_the_wrong_shapes_is_an_artifact_error():
    stored = column_spread_matrix()
    classes, clusters = fit_classes([stored], 8)
    blob = encode_runs([stored], classes, clusters)
    rows, cols = stored.shape
    for shapes in ([(rows, cols + 1)], [(rows - 1, cols)], [(rows, cols), (1, 1)]):
        with pytest.raises(ArtifactError):
            decode_runs(blob, shapes)
    for cut in (0, 3, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ArtifactError):
            decode_runs(blob[:cut], [stored.shape])


def test_classes_pay_for_themselves_where_columns_differ_and_not_on_iid_symbols():
    stored = column_spread_matrix()
    classes, clusters = fit_classes([stored], 16)
    one = encode_runs([stored], [np.zeros(stored.shape[0], dtype=np.uint8)], 1)
    many = encode_runs([stored], classes, clusters)
    narrow = narrow_columns(stored.shape[0])
    ideal = (order0_entropy_bits(stored[narrow]) + order0_entropy_bits(stored[~narrow])) / 8  # the true two classes
    assert clusters >= 2 and len(many) < 0.95 * len(one) and len(many) < 1.02 * ideal
    iid = np.clip(np.round(np.random.default_rng(1).laplace(size=(96, 256)) * 4), -31, 31).astype(np.int8)
    _, iid_clusters = fit_classes([iid], 16)
    assert iid_clusters == 1  # nothing to find: the stored classes would only cost bytes


def test_one_distribution_codes_within_a_fraction_of_a_percent_of_order0_entropy():
    iid = np.clip(np.round(np.random.default_rng(2).laplace(size=(512, 512)) * 4), -31, 31).astype(np.int8)
    blob = encode_runs([iid], [np.zeros(512, dtype=np.uint8)], 1)
    assert len(blob) <= 1.003 * order0_entropy_bits(iid) / 8


def noisy_quantized(config: dict, noise: float = 0.02) -> QuantizedModel:
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return quantize_state(model.state_dict(), {}, QuantizeParams(method="rtn", min_numel=512), model.config.model_dump(mode="json"))


@pytest.fixture(scope="module")
def tiny_qm():
    return noisy_quantized(TINY)


@pytest.mark.parametrize("layout", ["row", "column"])
@pytest.mark.parametrize("distribution", ["group", "role", "tensor"])
def test_every_stream_layout_round_trips_a_gpt_bit_for_bit(tiny_qm, layout, distribution):
    packed = pack_model(tiny_qm, PackParams(compressor="best", distribution=distribution, layout=layout, ans_clusters=8, reference_brotli=False))
    parsed = parse_artifact(packed.data)
    art = artifact_from_parsed(parsed)
    for name, tensor in tiny_qm.state_dict().items():
        assert torch.equal(art.tensors[name], tensor), name
    symbol_streams = [s for i, s in enumerate(parsed.header.streams) if parsed.header.stream_tensors(i)[0].role == "q"]
    roles = {name.split(".", 2)[-1] if name.startswith("blocks.") else name for name in tiny_qm.quantized}
    expected = {"group": len({qt.group for qt in tiny_qm.quantized.values()}), "role": len(roles), "tensor": len(tiny_qm.quantized)}[distribution]
    assert len(symbol_streams) == expected
    assert all(s.column == (layout == "column") for s in symbol_streams)
    assert len(parsed.header.streams) - len(symbol_streams) == len({t.dtype for t in tiny_qm.passthrough.values()} | {torch.float16})


def test_entropy_bound_counts_group_entropy_and_side_bytes():
    q = torch.tensor([[0, 1], [0, 1]], dtype=torch.int8)
    qt = QuantizedTensor("w", "mlp", 4, q, torch.ones(2).half(), "float32", {"lowrank.u": torch.zeros(2, 1).half(), "lowrank.v": torch.zeros(1, 2).half()})
    qm = QuantizedModel({}, {"w": qt}, {"g": torch.zeros(3, dtype=torch.float32)}, {"w": "float32", "g": "float32"})
    bound = entropy_bound(qm)
    assert bound.symbol_bytes == pytest.approx(4 / 8)  # 4 symbols, 1 bit each
    assert bound.side_bytes == 2 * 2 + 2 * 2 + 2 * 2 + 3 * 4


# Packed model bytes at these scales: ~41 KB (the tiny profile's shape), ~270 KB (the default
# run's), ~1.4 MB. Prefix and header are ~540 bytes whatever the scale: the model config's
# differences from the defaults (~65 compressed bytes), the tokenizer hash, the stream table (a
# CRC-32 each) and the tensor table (~320), so at the tiny profile's size the container is ~1.3 %
# and under 0.5 % from ~110 KB of model bytes on.
SCALES = [
    ({"vocab_size": 384, "layers": 2, "width": 64, "heads": 2, "kv_heads": 1}, 0.014),
    ({"vocab_size": 1024, "layers": 4, "width": 128, "heads": 4, "kv_heads": 2}, 0.005),
    ({"vocab_size": 2048, "layers": 6, "width": 256, "heads": 4, "kv_heads": 2}, 0.005),
]


@pytest.mark.parametrize(("config", "ceiling"), SCALES)
def test_container_overhead_and_the_artifact_against_the_entropy_bound(config, ceiling):
    qm = noisy_quantized(config)
    packed = pack_model(qm, PackParams(compressor="ans", layout="column", ans_clusters=16, reference_brotli=False), {"tokenizer_sha256": "0f" * 32})
    assert packed.bytes_container == packed.bytes_model - sum(s["bytes"] for s in packed.streams)
    assert packed.bytes_container / packed.bytes_model < ceiling
    assert packed.bytes_model <= 1.02 * packed.bound.total_bytes


@st.composite
def forest(draw):
    """An int8 matrix and row references forming a random forest (parents drawn among earlier
    rows of a random permutation, so no cycles)."""
    rows, cols = draw(st.integers(1, 12)), draw(st.integers(0, 6))
    gen = np.random.default_rng(draw(st.integers(0, 2**16)))
    q = gen.integers(-63, 64, (rows, cols)).astype(np.int8)
    perm = gen.permutation(rows)
    edges = [(perm[i], perm[gen.integers(0, i)]) for i in range(1, rows) if gen.random() < 0.7]
    return q, np.asarray(edges, dtype=np.int32).T.reshape(2, -1)


@settings(max_examples=100, deadline=None)
@given(forest())
def test_row_references_round_trip_any_forest(case):
    q, refs = case
    roots, diffs = reference(q, refs)
    assert roots.shape[0] + diffs.shape[0] == q.shape[0]
    assert np.array_equal(dereference(roots, diffs, refs), q)


@pytest.mark.parametrize(
    ("refs", "match"),
    [([[1, 2], [2, 1]], "cycle"), ([[1, 1], [0, 2]], "two parents"), ([[1], [1]], "its own"), ([[5], [0]], "outside"), ([[0, 1, 2]], "shape")],
)
def test_malformed_row_references_are_artifact_errors(refs, match):
    q = np.arange(15, dtype=np.int8).reshape(5, 3)
    refs = np.asarray(refs, dtype=np.int32)
    with pytest.raises(ArtifactError, match=match):
        dereference(q[:3], q[:2], refs)


def near_duplicate_embedding(rows: int = 256, cols: int = 64, duplicates: int = 64) -> torch.Tensor:
    """A trained-like int7 embedding: iid rows, and rows close to one shared vector (rare tokens)."""
    gen = np.random.default_rng(3)
    q = np.clip(np.round(gen.laplace(size=(rows, cols)) * 4), -63, 63)
    q[:duplicates] = np.clip(q[0] + np.round(gen.laplace(size=(duplicates, cols)) * 0.3), -63, 63)
    return torch.from_numpy(q[gen.permutation(rows)].astype(np.int8))


def test_row_references_find_near_duplicate_rows_and_round_trip():
    q = near_duplicate_embedding()
    qt = QuantizedTensor("emb.weight", "embedding", 7, q, torch.full((q.shape[0],), 0.01).half(), "float32")
    qm = QuantizedModel({}, {"emb.weight": qt}, {}, {"emb.weight": "float32"})
    plain = pack_model(qm, PackParams(compressor="ans", ans_clusters=4, row_refs=False, reference_brotli=False))
    refs = pack_model(qm, PackParams(compressor="ans", ans_clusters=4, row_refs=True, reference_brotli=False))  # differences get their own class
    parsed = parse_artifact(refs.data)
    stored = [e for e in parsed.header.tensors if e.role == "refs"]
    assert len(stored) == 1 and 55 <= stored[0].shape[1] <= 70  # about the 63 near-duplicates
    assert refs.bytes_model < 0.9 * plain.bytes_model
    assert torch.equal(artifact_from_parsed(parsed).tensors["emb.weight"], qm.state_dict()["emb.weight"])
    iid = pack_model(noisy_quantized(TINY), PackParams(compressor="ans", row_refs=True, reference_brotli=False))
    assert not [e for e in parse_artifact(iid.data).header.tensors if e.role == "refs"]  # nothing to gain: none stored


def test_the_header_stores_the_model_config_as_differences_from_the_defaults_under_a_crc(tiny_qm):
    packed = pack_model(tiny_qm, PackParams(compressor="ans", reference_brotli=False))
    header = parse_artifact(packed.data).header
    assert header.model_config_ == {k: v for k, v in TINY.items()} and header.model_config_crc32 is not None
    assert artifact_from_parsed(parse_artifact(packed.data)).model_config == tiny_qm.model_config | ModelParams.model_validate(TINY).model_dump(mode="json")
    full = ModelParams.model_validate(TINY).model_dump(mode="json")
    assert expand_model_config(*compact_model_config(full)) == full
    with pytest.raises(ArtifactError, match="CRC-32 does not match"):
        expand_model_config({**header.model_config_, "layers": 3}, header.model_config_crc32)
    assert compact_model_config({"layers": "many"}) == ({"layers": "many"}, None)  # stored whole; building it fails later
