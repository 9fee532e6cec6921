"""calibrate reads training shards only; Hessians of a real tiny GPT; calibrate -> quantize stages."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pgolf.config.calibrate import CalibrateParams
from pgolf.config.quantize import QuantizeParams
from pgolf.data.shards import write_shard
from pgolf.errors import DataError
from pgolf.io import read_json
from pgolf.model import build_model
from pgolf.quant.calibrate import calibrate_hessians, calibrate_stage, check_train_shards, load_hessians, sample_batches
from pgolf.quant.stage import quantize_stage
from pgolf.config.pack import PackParams
from pgolf.provenance import sha256_file
from pgolf.quant.store import load_quantized
from pgolf.train.checkpoint import CheckpointMeta, save_checkpoint
from pgolf.train.data import StreamPosition

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY = {"vocab_size": 64, "layers": 2, "width": 32, "heads": 2, "kv_heads": 1}
PARAMS = CalibrateParams(batches=3, batch_seqs=2, seq_len=16, seed=1)


@pytest.fixture()
def shard_dir(tmp_path: Path) -> Path:
    """One real training shard beside a poisoned, unreadable validation shard."""
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "fineweb_train_000000.bin", rng.integers(0, 64, 4000))
    val = tmp_path / "fineweb_val_000000.bin"
    val.write_bytes(b"POISON" * 100)
    val.chmod(0)
    return tmp_path


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_calibration_never_opens_validation_shards(shard_dir, monkeypatch):
    opened: list[str] = []
    real_open, real_os_open, real_memmap = builtins.open, os.open, np.memmap

    def spy_open(file, *args, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else repr(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_os_open(path, *args, **kwargs)

    class SpyMemmap(real_memmap):
        def __new__(cls, filename, *args, **kwargs):
            opened.append(os.fspath(filename))
            return real_memmap.__new__(real_memmap, filename, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(np, "memmap", SpyMemmap)
    hs = calibrate_hessians(tiny_model(), [shard_dir / "fineweb_train_000000.bin"], PARAMS)
    assert hs.tokens == 3 * 2 * 16
    assert any("fineweb_train_000000.bin" in p for p in opened)
    assert not [p for p in opened if "val" in Path(p).name]


def test_validation_or_unknown_shards_are_refused_before_reading(shard_dir):
    for name in ("fineweb_val_000000.bin", "tokens.bin", "fineweb_train_0.bin"):
        with pytest.raises(DataError, match="not a training shard"):
            check_train_shards([shard_dir / name])
    with pytest.raises(DataError, match="at least one"):
        check_train_shards([])


def test_dvc_calibrate_stage_does_not_depend_on_validation_data():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    calibrate = stages["calibrate"]
    deps = [str(d) for d in calibrate["deps"]]
    assert "data/shards" not in [d.rstrip("/") for d in deps]
    assert not [d for d in deps if "val" in Path(d).name]
    assert any(Path(d).name.startswith("fineweb_train_") for d in deps)
    for shard in [d for d in deps if d.startswith("data/shards/")]:
        assert shard in calibrate["cmd"]


def test_windows_are_deterministic_and_in_range():
    tokens = [np.arange(100, dtype=np.uint16), np.arange(1000, 1050, dtype=np.uint16)]
    a = list(sample_batches(tokens, PARAMS))
    b = list(sample_batches(tokens, PARAMS))
    assert len(a) == 3 and all(x.shape == (2, 16) and x.dtype == torch.int64 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for batch in a:
        for row in batch:
            assert bool((row[1:] - row[:-1] == 1).all())  # contiguous windows of one shard
    with pytest.raises(DataError, match="seq_len"):
        list(sample_batches([np.arange(8, dtype=np.uint16)], PARAMS))


def test_gpt_hessians_share_qkv_inputs(shard_dir):
    hs = calibrate_hessians(tiny_model(), [shard_dir / "fineweb_train_000000.bin"], PARAMS)
    for i in range(2):
        assert hs.layers[f"blocks.{i}.attn.c_q.weight"] == hs.layers[f"blocks.{i}.attn.c_k.weight"] == hs.layers[f"blocks.{i}.attn.c_v.weight"]
        assert hs.layers[f"blocks.{i}.mlp.fc.weight"] != hs.layers[f"blocks.{i}.attn.c_q.weight"]
    for h in hs.hessians.values():
        assert torch.allclose(h, h.T) and float(torch.diagonal(h).min()) >= 0


def write_checkpoint(directory: Path, model: torch.nn.Module) -> None:
    meta = CheckpointMeta(model_config=dict(model.config.model_dump(mode="json")), step=1, tokens_seen=0, data_position=StreamPosition(), seed=0, ema=False, fingerprint="test", params={"seq_len": 16})
    save_checkpoint(directory, meta, model.state_dict(), {})


def test_calibrate_then_quantize_stages(shard_dir, tmp_path):
    model = tiny_model()
    ckpt = tmp_path / "checkpoint"
    write_checkpoint(ckpt, model)
    result = calibrate_stage(PARAMS.model_copy(update={"seq_len": None}), ckpt, [shard_dir / "fineweb_train_000000.bin"], tmp_path / "calibrate", tmp_path / "metrics" / "calibrate.json")
    assert result.tokens == 96 and result.seq_len == 16 and result.layers == 12 and result.groups == 8
    assert read_json(tmp_path / "metrics" / "calibrate.json")["shards"] == ["fineweb_train_000000.bin"]
    hs = load_hessians(tmp_path / "calibrate")
    assert len(hs.hessians) == 8
    qparams = QuantizeParams(min_numel=512)
    q = quantize_stage(qparams, ckpt, tmp_path / "calibrate", tmp_path / "quantize", tmp_path / "metrics" / "quantize.json")
    assert q.tensors_quantized == 13  # 12 block matrices + the tied embedding
    qm = load_quantized(tmp_path / "quantize")
    metrics = read_json(tmp_path / "metrics" / "quantize.json")
    rows = {r["name"]: r for r in metrics["tensors"]}
    assert rows["blocks.0.mlp.fc.weight"]["method"] == "gptq" and rows["tok_emb.weight"]["method"] == "rtn"
    gptq_rows = [r for r in metrics["tensors"] if r["method"] == "gptq"]
    assert sum(r["rel_output_err"] for r in gptq_rows) < sum(r["rel_output_err_rtn"] for r in gptq_rows)
    rebuilt = build_model(qm.model_config)
    rebuilt.load_state_dict(qm.state_dict(), strict=True)
    idx = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        ref, out = model(idx), rebuilt(idx)
    assert float((ref - out).abs().max()) < 0.5 * float(ref.abs().max()) + 1e-3
    for stage, phase, sections in (("calibrate", "hessians", {"calibrate"}), ("quantize", "solve", {"quantize"})):
        provenance = read_json(tmp_path / "metrics" / f"{stage}.json")["provenance"]
        assert provenance["config"].keys() == sections and provenance["device"] == {"kind": "cpu", "count": 1}
        timing = read_json(tmp_path / "metrics" / "timing" / f"{stage}.json")
        assert 0 < timing["phases"][phase] <= timing["wall_seconds"] and timing[f"{stage}_time_s"] > 0, stage
    assert read_json(tmp_path / "metrics" / "calibrate.json")["provenance"]["data"]["shards_sha256"] == {
        "fineweb_train_000000.bin": sha256_file(shard_dir / "fineweb_train_000000.bin")}


def test_calibrate_and_quantize_metrics_are_seed_fixed(shard_dir, tmp_path):
    ckpt = tmp_path / "checkpoint"
    write_checkpoint(ckpt, tiny_model())
    texts = []
    for _ in range(2):
        calibrate_stage(PARAMS, ckpt, [shard_dir / "fineweb_train_000000.bin"], tmp_path / "calibrate", tmp_path / "metrics" / "calibrate.json")
        quantize_stage(QuantizeParams(min_numel=512), ckpt, tmp_path / "calibrate", tmp_path / "quantize", tmp_path / "metrics" / "quantize.json")
        texts.append([(tmp_path / "metrics" / f"{stage}.json").read_bytes() for stage in ("calibrate", "quantize")])
    assert texts[0] == texts[1] and all(b'"provenance"' in text for text in texts[0])


def test_quantize_fit_counts_given_code_bytes_and_hashes_the_pack_section(shard_dir, tmp_path):
    ckpt = tmp_path / "checkpoint"
    write_checkpoint(ckpt, tiny_model())
    calibrate_stage(PARAMS, ckpt, [shard_dir / "fineweb_train_000000.bin"], tmp_path / "calibrate", tmp_path / "calibrate.json")
    params = QuantizeParams(min_numel=512, target_bytes=1_000_000)
    quantize_stage(params, ckpt, tmp_path / "calibrate", tmp_path / "quantize", tmp_path / "quantize.json", PackParams(), code_bytes=777)
    metrics = read_json(tmp_path / "quantize.json")
    assert metrics["fit"]["bytes_code"] == 777 and metrics["fit"]["bytes_model_predicted"] == metrics["fit"]["bytes_total_predicted"] - 777
    assert metrics["provenance"]["config"].keys() == {"quantize", "pack"}
