"""GPTQ calibration on the training ranks (calibrate.on_train_ranks): right after the loop, the
same Hessians as the calibrate stage, reused by it when the sampling matches, timed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from pgolf.config.calibrate import CalibrateParams
from pgolf.dist import DistInfo, join_group, shutdown
from pgolf.errors import ParamsError
from pgolf.io import read_json
from pgolf.model import build_model
from pgolf.quant.calibrate import calibrate_stage, load_hessians, resolve_seq_len
from pgolf.quant.hessian import collect_hessians
from pgolf.train.loop import train
from train_helpers import make_shards, tiny_params

torch.set_num_threads(1)
CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)
CALIBRATION = CalibrateParams(batches=4, batch_seqs=2, seed=3, head_hessian=True, on_train_ranks=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))


def _stage(checkpoint: Path, shards: Path, out: Path, params: CalibrateParams = CALIBRATION):
    return calibrate_stage(params, checkpoint, [shards / "fineweb_train_000000.bin"], out / "calibrate", out / "calibrate.json")


def test_reduce_sums_every_hessian_row_count_and_token_count():
    torch.manual_seed(0)
    model = build_model({"vocab_size": 16, "layers": 1, "width": 16, "heads": 2, "kv_heads": 1})
    batches = [torch.randint(0, 16, (2, 8)) for _ in range(2)]
    plain = collect_hessians(model, batches)
    doubled = collect_hessians(model, batches, reduce=lambda t: 2 * t)
    assert doubled.layers == plain.layers and doubled.tokens == 2 * plain.tokens == 64
    assert all(torch.equal(doubled.hessians[k], 2 * plain.hessians[k]) for k in plain.hessians)


def test_one_process_collects_the_stage_hessians_bit_for_bit_and_the_stage_reuses_them(shards, tmp_path, caplog):
    params = tiny_params(tmp_path, iterations=4, val_every=0, ema_decay=0.5, seq_len_schedule=[[0.5, 64]], val_batch_tokens=512)
    result = train(params, shards, tmp_path / "ranks", CPU, calibration=CALIBRATION)
    checkpoint = tmp_path / "ranks" / "checkpoint"
    written = read_json(checkpoint / "hessians.json")
    assert written["collected_on"] == "train_ranks" and written["world_size"] == 1 and written["shards"] == ["fineweb_train_000000.bin"]
    assert written["sampling"]["seq_len"] == 64  # the length training ended at, not train.seq_len
    assert result.calibrate_seconds > 0 and "calibrate_seconds" in result.timing() and "calibrate_seconds" not in result.metrics()
    # The stage reuses them; collecting afresh from the saved (EMA) weights gives the same bits.
    reused = _stage(checkpoint, shards, tmp_path / "reuse")
    fresh = _stage(checkpoint, shards, tmp_path / "fresh", CALIBRATION.model_copy(update={"on_train_ranks": False}))
    assert reused.collected_on == "train_ranks" and fresh.collected_on == "calibrate_stage"
    assert read_json(tmp_path / "reuse" / "calibrate.json")["collected_on"] == "train_ranks"
    a, b = load_hessians(tmp_path / "reuse" / "calibrate"), load_hessians(tmp_path / "fresh" / "calibrate")
    assert a.layers == b.layers and a.tokens == b.tokens == 4 * 2 * 64 and "tok_emb.weight" in a.layers
    assert all(torch.equal(a.hessians[k], b.hessians[k]) for k in a.hessians)
    # Other sampling than the ranks used: the stage collects them itself and says why.
    with caplog.at_level(logging.WARNING):
        other = _stage(checkpoint, shards, tmp_path / "other", CALIBRATION.model_copy(update={"batches": 5}))
    assert other.collected_on == "calibrate_stage" and other.tokens == 5 * 2 * 64
    assert "collected with sampling" in caplog.text and "outside the training budget" in caplog.text


def test_a_checkpoint_without_rank_hessians_is_calibrated_by_the_stage(shards, tmp_path, caplog):
    train(tiny_params(tmp_path, iterations=2, val_every=0), shards, tmp_path / "plain", CPU)
    checkpoint = tmp_path / "plain" / "checkpoint"
    assert not (checkpoint / "hessians.json").exists()
    with caplog.at_level(logging.WARNING):
        result = _stage(checkpoint, shards, tmp_path / "stage")
    assert result.collected_on == "calibrate_stage" and result.seq_len == 32 and "hessians.json: not found" in caplog.text


def test_more_ranks_than_batches_is_refused_before_training(shards, tmp_path):
    info = DistInfo(0, 8, 0, torch.device("cpu"), None)
    with pytest.raises(ParamsError, match=r"calibrate.batches \(4\) must be at least the number of training ranks \(8\)"):
        train(tiny_params(tmp_path, iterations=2), shards, tmp_path / "o", info, calibration=CALIBRATION)
    assert not (tmp_path / "o").exists()


def test_seq_len_resolves_to_the_length_training_ended_at(tmp_path):
    checkpoint = tmp_path / "c"
    checkpoint.mkdir()
    (checkpoint / "checkpoint.json").write_text(json.dumps({"model_config": {}, "params": {"seq_len": 32, "seq_len_schedule": [[0.1, 64], [0.7, 96]]}}))
    assert resolve_seq_len(CalibrateParams(), checkpoint).seq_len == 96
    assert resolve_seq_len(CalibrateParams(seq_len=16), checkpoint).seq_len == 16
    (checkpoint / "checkpoint.json").write_text(json.dumps({"model_config": {}, "params": {"seq_len": 32, "seq_len_schedule": []}}))
    assert resolve_seq_len(CalibrateParams(), checkpoint).seq_len == 32


def _worker(rank: int, init_file: str, shards: str, out: str, tmp: str) -> None:
    torch.set_num_threads(1)
    info = join_group(rank, 2, rank, "cpu", f"file://{init_file}")
    try:
        train(tiny_params(Path(tmp), iterations=4, val_every=0, nproc=2, grad_accum_steps=2, resume=False), Path(shards), Path(out), info, calibration=CALIBRATION)
    finally:
        shutdown(info)


def test_two_gloo_ranks_split_the_batches_and_sum_to_the_stage_hessians(shards, tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(shards), str(tmp_path / "two"), str(tmp_path)), nprocs=2, join=True)
    checkpoint = tmp_path / "two" / "checkpoint"
    assert read_json(checkpoint / "hessians.json")["world_size"] == 2
    fresh = _stage(checkpoint, shards, tmp_path / "fresh", CALIBRATION.model_copy(update={"on_train_ranks": False}))
    ranks = load_file(str(checkpoint / "hessians.safetensors"))
    stage = load_hessians(tmp_path / "fresh" / "calibrate")
    assert fresh.tokens == read_json(checkpoint / "hessians.json")["tokens"]
    assert set(ranks) == set(stage.hessians)
    assert all(torch.allclose(ranks[k], stage.hessians[k], rtol=1e-5, atol=1e-6) for k in ranks)  # the order of the sum differs
