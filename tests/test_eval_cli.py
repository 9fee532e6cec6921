"""`pgolf eval` on a real packed artifact, real shards and a real tokenizer (all tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import english_docs, trained_processor

from pgolf.cli import main
from pgolf.config.quant import PackParams, QuantizeParams
from pgolf.config.train import ModelParams
from pgolf.data.shards import SHARDS_MANIFEST, write_shard
from pgolf.model import GPT, model_config_dict
from pgolf.pack.pack import pack_model
from pgolf.quant.apply import quantize_state
from pgolf.tokenizer import byte_table, stream_bytes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval_cli")
    docs = english_docs(1200)
    sp = trained_processor(root / "tokenizer", docs, vocab_size=384)
    val = docs[:24]
    tokens = np.concatenate([[sp.bos_id(), *sp.encode(doc)] for doc in val]).astype(np.uint16)
    shards = root / "shards"
    write_shard(shards / "fineweb_val_000000.bin", tokens)
    (shards / SHARDS_MANIFEST).write_text(json.dumps({"vocab_size": sp.vocab_size(), "bos_id": sp.bos_id()}))
    torch.manual_seed(0)
    model = GPT(ModelParams(vocab_size=sp.vocab_size(), num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    qm = quantize_state(model.state_dict(), {}, QuantizeParams(method="rtn", min_numel=512), model_config_dict(model))
    artifact = root / "pack" / "model.pgolf"
    artifact.parent.mkdir()
    artifact.write_bytes(pack_model(qm, PackParams(), {}).data)
    return {
        "artifact": artifact,
        "shards": shards,
        "tokenizer": root / "tokenizer" / "tokenizer.model",
        "tokens": tokens,
        "val_bytes": int(stream_bytes(byte_table(sp), tokens).sum()),  # the audit's val_bytes
    }


def run_eval(ws: dict, capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["eval", str(ws["artifact"]), "--shards", str(ws["shards"]), "--tokenizer", str(ws["tokenizer"]), *args])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and "--json" in args else None), captured.err


def test_sliding_with_stride_equal_to_window_equals_plain(workspace, capsys) -> None:
    code, plain, _ = run_eval(workspace, capsys, "--method", "plain", "--set", "seq_len=64", "--json")
    assert code == 0
    code, sliding, _ = run_eval(workspace, capsys, "--method", "sliding", "--set", "window=64", "--set", "stride=64", "--json")
    assert code == 0
    for key in ("val_bpb", "val_loss", "scored_tokens", "scored_bytes"):
        assert plain[key] == sliding[key], key
    assert set(plain) >= {"val_bpb", "val_loss", "scored_tokens", "scored_bytes", "seconds"}


def test_scored_bytes_equal_the_audits_val_bytes(workspace, capsys) -> None:
    code, out, _ = run_eval(workspace, capsys, "--method", "sliding", "--set", "window=64", "--set", "stride=16", "--json")
    assert code == 0
    assert out["scored_bytes"] == workspace["val_bytes"]
    assert out["scored_tokens"] == workspace["tokens"].size - 1
    assert 0 < out["val_bpb"] < 20


def test_ttt_reports_no_ttt_and_a_passed_legality_check(workspace, capsys) -> None:
    sets = ["chunk_tokens=32", "window=64", "legality_tokens=300", "batch_docs=8", "lr=0.01"]
    code, out, _ = run_eval(workspace, capsys, "--method", "ttt", *[a for s in sets for a in ("--set", s)], "--json")
    assert code == 0
    assert out["legality"]["passed"] and out["legality"]["c1_max_score_change_nats"] == 0.0
    assert out["scored_bytes"] == workspace["val_bytes"]
    assert np.isfinite(out["val_bpb_no_ttt"]) and out["val_bpb"] != out["val_bpb_no_ttt"]


def test_human_readable_output(workspace, capsys) -> None:
    code, _, _ = run_eval(workspace, capsys, "--method", "plain")
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "plain", "--set", "stride=4"], "plain.stride: unknown key"),
        (["--method", "sliding", "--set", "stride=0"], "sliding.stride"),
        (["--method", "sliding", "--set", "window"], "expected key=value"),
        (["--method", "ttt", "--set", "chunk_tokens=999", "--set", "window=64"], "chunk_tokens"),
    ],
)
def test_bad_sets_exit_2_naming_the_key(workspace, capsys, args: list[str], message: str) -> None:
    code, _, err = run_eval(workspace, capsys, *args)
    assert code == 2 and message in err


def test_missing_inputs_exit_1(workspace, capsys, tmp_path: Path) -> None:
    bad = dict(workspace, artifact=tmp_path / "missing.pgolf")
    code, _, err = run_eval(bad, capsys, "--method", "plain")
    assert code == 1 and "error:" in err
    (tmp_path / "junk.pgolf").write_bytes(b"not an artifact")
    code, _, err = run_eval(dict(workspace, artifact=tmp_path / "junk.pgolf"), capsys, "--method", "plain")
    assert code == 1
    code, _, err = run_eval(dict(workspace, shards=tmp_path), capsys, "--method", "plain")
    assert code == 1 and "manifest" in err
