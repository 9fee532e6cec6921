"""pack: codecs, the ANS coder against the entropy bound and brotli-11, byte accounting, the
limit gate, the loader on a real GPT, and the inspect/unpack CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from pgolf.cli import main as cli_main
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.errors import ArtifactError
from pgolf.io import read_json
from pgolf.model import build_model
from pgolf.pack import load_artifact, load_model_from_artifact
from pgolf.pack.codecs import CODECS, compress, decompress, shuffle_bytes, unshuffle_bytes
from pgolf.pack.entropy import decode, encode, fit_codebook, order0_entropy_bits
from pgolf.pack.pack import ARTIFACT_NAME, check_total, pack_model, pack_stage
from pgolf.pack.runs import encode_runs
from pgolf.provenance import sha256_file
from pgolf.pack.artifact import parse_artifact
from pgolf.pack.load import artifact_from_parsed
from pgolf.quant.apply import QuantizedModel, quantize_state
from pgolf.quant.scheme import QuantizedTensor
from pgolf.quant.rtn import qmax_for_bits, rtn, std_scale
from pgolf.quant.store import save_quantized

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def load(data: bytes):
    return artifact_from_parsed(parse_artifact(data))
TINY = {"vocab_size": 64, "layers": 2, "width": 32, "heads": 2, "kv_heads": 1}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("itemsize", [1, 2, 4])
def test_codecs_round_trip_with_shuffle(codec, itemsize):
    data = np.random.default_rng(itemsize).standard_normal(300).astype(np.float32).tobytes()[: 240 * itemsize]
    shuffled = shuffle_bytes(data, itemsize)
    assert unshuffle_bytes(shuffled, itemsize) == data
    blob = compress(shuffled, codec, 5)
    assert unshuffle_bytes(decompress(blob, codec, len(data)), itemsize) == data
    with pytest.raises(ArtifactError):
        decompress(blob, codec, len(data) - 1)
    with pytest.raises(ArtifactError):
        decompress(blob, codec, len(data) + 7)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-31, 31), min_size=0, max_size=400), st.integers(1, 5))
def test_ans_round_trips_any_symbols(values, spread):
    symbols = np.asarray(values, dtype=np.int8) // spread
    book = fit_codebook(symbols)
    assert np.array_equal(decode(encode(symbols, book), book, symbols.size), symbols)


def test_order0_entropy():
    assert order0_entropy_bits(np.array([0, 1, 0, 1])) == pytest.approx(4.0)
    assert order0_entropy_bits(np.zeros(10)) == 0.0
    assert order0_entropy_bits(np.array([1, 2, 3, 4, 5, 6, 7, 8])) == pytest.approx(24.0)


def trained_like_symbols(bits: int, k: float, rows: int = 512, cols: int = 1024) -> np.ndarray:
    """Heavy-tailed rows (like trained weights), quantized with the frontier's std scale.

    512x1024 is one MLP matrix of the baseline model; a real tensor group holds many of them,
    so the codebook (stored once per group) weighs even less there than here."""
    g = torch.Generator().manual_seed(bits)
    torch.manual_seed(bits)
    w = torch.distributions.StudentT(5.0).sample((rows, cols)) * torch.rand(rows, 1, generator=g).add(0.5)
    maxq = qmax_for_bits(bits)
    return rtn(w, std_scale(w, k, maxq), maxq).numpy()


@pytest.mark.parametrize(("bits", "k"), [(6, 12.0), (8, 20.0), (4, 6.0)])
def test_ans_is_within_2_percent_of_entropy_and_beats_brotli11(bits, k):
    symbols = trained_like_symbols(bits, k)
    coded = len(encode_runs([symbols], [np.zeros(symbols.shape[0], dtype=np.uint8)], 1))  # one distribution, stored in the blob
    entropy_bytes = order0_entropy_bits(symbols) / 8
    assert coded <= 1.02 * entropy_bytes
    assert coded < len(compress(symbols.tobytes(), "brotli", 11))


def test_best_coder_takes_the_smaller_of_ans_and_lz_per_tensor():
    """Near-duplicate rows (as in the embedding of briefly trained models): order-0 ANS cannot see
    the repeats, brotli can; `best` keeps brotli there and ANS on iid-like rows."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(-20, 21, (1, 256), generator=g).to(torch.int8)
    dup = base.repeat(256, 1)
    dup[::7] = torch.randint(-20, 21, (37, 256), generator=g).to(torch.int8)
    iid = torch.clamp(torch.round(torch.randn(256, 256, generator=g) * 6), -31, 31).to(torch.int8)
    scale = torch.full((256,), 0.01).half()
    q = {"emb.weight": QuantizedTensor("emb.weight", "embedding", 6, dup, scale, "float32"), "mlp.weight": QuantizedTensor("mlp.weight", "mlp", 6, iid, scale, "float32")}
    qm = QuantizedModel({}, q, {}, {"emb.weight": "float32", "mlp.weight": "float32"})
    best = pack_model(qm, PackParams(compressor="best", layout="row", row_refs=False, reference_brotli=True))  # LZ sees whole repeated rows
    ans = pack_model(qm, PackParams(compressor="ans", row_refs=False, reference_brotli=False))
    assert best.groups["embedding"]["encodings"] != {"ans": 1} and best.groups["mlp"]["encodings"] == {"ans": 1}
    assert best.groups["embedding"]["packed_bytes"] < 0.5 * ans.groups["embedding"]["packed_bytes"]
    assert best.groups["embedding"]["codebook_bytes"] == 0  # unused codebooks are not stored
    for group in best.groups.values():
        assert group["packed_bytes"] <= group["ans_bytes"] and group["packed_bytes"] <= 1.01 * group["brotli11_bytes"]  # + the codebook
    assert best.bytes_model < ans.bytes_model
    art = load(best.data)
    assert torch.equal(art.tensors["emb.weight"], qm.state_dict()["emb.weight"])
    # Row references show ans the repeats: it then codes them smaller than the LZ coders saw them.
    refs = pack_model(qm, PackParams(compressor="ans", row_refs=True, reference_brotli=False))
    assert refs.groups["embedding"]["packed_bytes"] < best.groups["embedding"]["packed_bytes"]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    qm = quantize_state(model.state_dict(), {}, QuantizeParams(method="rtn", min_numel=512), model.config.model_dump(mode="json"))
    directory = tmp_path_factory.mktemp("quantize")
    save_quantized(qm, directory)
    return model, qm, directory


def test_pack_stage_writes_artifact_and_metrics(quantized, tmp_path):
    model, qm, qdir = quantized
    report = pack_stage(PackParams(), qdir, tmp_path / "data" / "pack", tmp_path / "metrics" / "pack.json", repo_root=REPO)
    metrics = read_json(tmp_path / "metrics" / "pack.json")
    for key in ("artifact", "bytes_model", "bytes_code", "bytes_total", "limit_bytes", "groups"):
        assert key in metrics
    artifact = tmp_path / "data" / "pack" / ARTIFACT_NAME
    assert metrics["bytes_model"] == artifact.stat().st_size == report.bytes_model
    assert metrics["bytes_total"] == metrics["bytes_model"] + metrics["bytes_code"]
    assert metrics["limit_bytes"] == 16_000_000
    for group in ("attention", "mlp", "embedding"):
        g = metrics["groups"][group]
        assert g["symbols"] > 0 and g["packed_bytes"] > 0 and g["entropy_bytes"] > 0 and "rel_recon_err_mean" in g["quant_error"]
        assert (g["codebook_bytes"] > 0) == ("ans" in g["encodings"]) and g["brotli11_bytes"] > 0  # ans streams store their model
    assert metrics["groups"]["attention"]["bits"] == 6
    assert not Path(metrics["artifact"]).is_absolute()
    rebuilt = load_model_from_artifact(artifact)
    reference = build_model(qm.model_config)
    reference.load_state_dict(qm.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(rebuilt(idx), reference(idx))
    assert load_artifact(artifact).model_config == qm.model_config
    assert metrics["provenance"]["config"].keys() == {"pack"} and metrics["provenance"]["data"] is None  # no tokenizer given
    timing = read_json(tmp_path / "metrics" / "timing" / "pack.json")
    assert 0 < timing["phases"]["compress"] <= timing["wall_seconds"] and "git_commit" in timing["provenance"]


def test_pack_stage_metrics_are_seed_fixed_and_name_the_tokenizer(quantized, tmp_path):
    _, _, qdir = quantized
    tokenizer = tmp_path / "tokenizer.model"
    tokenizer.write_bytes(b"a tokenizer model")
    texts = []
    for _ in range(2):
        pack_stage(PackParams(), qdir, tmp_path / "pack", tmp_path / "pack.json", repo_root=REPO, tokenizer=tokenizer)
        texts.append((tmp_path / "pack.json").read_bytes())
    assert texts[0] == texts[1]
    assert json.loads(texts[0])["provenance"]["data"]["tokenizer_sha256"] == sha256_file(tokenizer)


def test_pack_stage_counts_given_code_bytes(quantized, tmp_path):
    _, _, qdir = quantized
    report = pack_stage(PackParams(), qdir, tmp_path / "pack", tmp_path / "pack.json", code_bytes=1234)
    metrics = read_json(tmp_path / "pack.json")
    assert report.bytes_code == metrics["bytes_code"] == 1234 and metrics["code"] == {"given_bytes": 1234}
    assert metrics["bytes_total"] == metrics["bytes_model"] + 1234
    with pytest.raises(ArtifactError, match=r"\(model \d+ \+ code 16000000\) exceeds pack.limit_bytes"):
        pack_stage(PackParams(), qdir, tmp_path / "pack", tmp_path / "pack2.json", code_bytes=16_000_000)
    assert not (tmp_path / "pack").exists()


def test_check_total_gates_at_the_limit() -> None:
    assert check_total(10, 5, 15) == 15
    with pytest.raises(ArtifactError, match="exceeds pack.limit_bytes 15 by 1 bytes"):
        check_total(10, 6, 15)


def test_over_the_limit_fails_naming_the_overage_and_leaves_nothing(quantized, tmp_path):
    _, _, qdir = quantized
    out = tmp_path / "pack"
    pack_stage(PackParams(), qdir, out, tmp_path / "m.json", repo_root=REPO)
    assert (out / ARTIFACT_NAME).exists()
    with pytest.raises(ArtifactError, match=r"exceeds pack.limit_bytes 1000 by \d+ bytes"):
        pack_stage(PackParams(limit_bytes=1000), qdir, out, tmp_path / "m2.json", repo_root=REPO)
    assert not out.exists() and not (tmp_path / "m2.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pack")]


def test_wrong_model_config_is_an_artifact_error(quantized, tmp_path):
    _, qm, _ = quantized
    bad = type(qm)({**qm.model_config, "width": 64}, qm.quantized, qm.passthrough, qm.dtypes, qm.aliases, [])
    path = tmp_path / "bad.pgolf"
    path.write_bytes(pack_model(bad, PackParams()).data)
    with pytest.raises(ArtifactError, match="do not fit the model"):
        load_model_from_artifact(path)


def test_inspect_and_unpack_cli(quantized, tmp_path, capsys):
    _, qm, _ = quantized
    path = tmp_path / "model.pgolf"
    path.write_bytes(pack_model(qm, PackParams()).data)
    assert cli_main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["file_bytes"] == path.stat().st_size
    assert {e["role"] for e in info["tensors"]} == {"q", "scale", "plain"}
    assert cli_main(["unpack", str(path), "--out", str(tmp_path / "unpacked")]) == 0
    tensors = load_file(str(tmp_path / "unpacked" / "tensors.safetensors"))
    name = "blocks.0.mlp.fc.weight"
    assert tensors[f"q/{name}"].dtype == torch.int8 and torch.equal(tensors[f"q/{name}"], qm.quantized[name].q)
    assert tensors[f"scale/{name}"].is_floating_point()
    assert tensors["plain/blocks.0.attn_scale"].is_floating_point()
    bad = tmp_path / "bad.pgolf"
    bad.write_bytes(path.read_bytes()[:-3])
    proc = subprocess.run([sys.executable, "-m", "pgolf", "inspect", str(bad), "--json"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "truncated" in proc.stderr
