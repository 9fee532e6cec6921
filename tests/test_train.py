"""The training loop end to end on tiny shards: determinism, resume, divergence, EMA, wall clock,
checkpoint format; plus the pure schedule functions and the token stream."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pgolf.config.train import TrainParams
from pgolf.dist import DistInfo
from pgolf.errors import DataError, ParamsError
from pgolf.model.checkpoint import load_model
from pgolf.train.checkpoint import read_meta
from pgolf.train.data import DistributedBatches, StreamPosition, TokenStream, validation_tokens
from pgolf.train.loop import Trainer, TrainingDiverged, train
from pgolf.train.schedule import lr_scale, muon_momentum, progress
from pgolf.train.stage import run_train_stage
from train_helpers import VOCAB, make_shards, tiny_params

torch.set_num_threads(1)
CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)
METRIC_KEYS = {"steps", "tokens_seen", "train_loss", "val_loss", "params_count", "stopped_by", "resumed_from_step"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoint" / "model.safetensors"))


def test_train_stage_writes_checkpoint_metrics_and_curves(shards, tmp_path):
    params = tiny_params(tmp_path, iterations=30)
    result = run_train_stage(params, shards, tmp_path / "out", tmp_path / "metrics.json", tmp_path / "live")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS | {"provenance"} and metrics["steps"] == 30  # nothing that changes run to run
    assert metrics["provenance"]["device"] == {"kind": "cpu", "count": 1} and metrics["provenance"]["config"].keys() == {"train"}
    timing = json.loads((tmp_path / "timing" / "metrics.json").read_text())
    assert set(timing) == {"tokens_per_second", "wallclock_seconds", "calibrate_seconds", "phases", "wall_seconds", "provenance"}
    assert timing["tokens_per_second"] > 0 and {"compile_warmup", "loop"} <= timing["phases"].keys()
    assert sum(timing["phases"].values()) <= timing["wall_seconds"] and "git_commit" in timing["provenance"]
    assert timing["calibrate_seconds"] == 0.0  # calibrate.on_train_ranks off
    assert metrics["tokens_seen"] == 30 * 512
    assert result.val_loss < np.log(VOCAB) - 1.0  # learned the Markov structure well below uniform
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert (tmp_path / "live" / "plots" / "metrics" / "val" / "loss.tsv").is_file()
    assert (tmp_path / "live" / "plots" / "metrics" / "lr" / "matrix.tsv").is_file()
    assert not (tmp_path / "live" / "plots" / "metrics" / "tokens_per_second.tsv").exists()
    meta = read_meta(tmp_path / "out" / "checkpoint")
    assert meta.step == 30 and meta.model_config["vocab_size"] == VOCAB
    model = load_model(tmp_path / "out" / "checkpoint")
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, VOCAB)
    assert not (Path(params.resume_dir)).exists() or not any(Path(params.resume_dir).iterdir())


def test_train_two_cpu_runs_with_same_params_are_identical(shards, tmp_path):
    params = tiny_params(tmp_path)
    a = train(params, shards, tmp_path / "a", CPU)
    b = train(params, shards, tmp_path / "b", CPU)
    assert (a.train_loss, a.val_loss) == (b.train_loss, b.val_loss)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # The whole output checkpoint is byte for byte the same (no wall-clock figure in it), so
    # dvc.lock and git see the same outputs on every run.
    files = sorted(p.name for p in (tmp_path / "a" / "checkpoint").iterdir())
    for name in files:
        assert (tmp_path / "a" / "checkpoint" / name).read_bytes() == (tmp_path / "b" / "checkpoint" / name).read_bytes(), name
    assert a.metrics() == b.metrics()
    c = train(tiny_params(tmp_path, seed=7), shards, tmp_path / "c", CPU)
    assert c.val_loss != a.val_loss


class _InterruptAt(logging.Handler):
    """Sends SIGINT to this process when the loop logs `step: N ` (a real signal, real handler)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.marker = f"step: {step} train_loss"

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.marker):
            os.kill(os.getpid(), signal.SIGINT)


def test_train_sigint_saves_and_resume_matches_an_uninterrupted_run(shards, tmp_path):
    params = tiny_params(tmp_path, iterations=12, ema_decay=0.9)
    straight = train(params, shards, tmp_path / "straight", CPU)
    logger = logging.getLogger("pgolf.train.loop")
    handler, level = _InterruptAt(5), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(params, shards, tmp_path / "resumed", CPU, tmp_path / "live")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    saved = [d for d in Path(params.resume_dir).iterdir()]
    assert len(saved) == 1 and read_meta(saved[0]).step == 6  # the step after the signal finishes first
    assert not (tmp_path / "resumed").exists()
    shutil.rmtree(tmp_path / "live")  # as DVC deletes the plots before rerunning a stage
    resumed = train(params, shards, tmp_path / "resumed", CPU, tmp_path / "live")
    steps_logged = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().split()[2::2]
    assert steps_logged == [str(i) for i in range(1, 13)]
    assert resumed.resumed_from_step == 6 and resumed.steps == 12
    assert resumed.val_loss == pytest.approx(straight.val_loss, abs=1e-6)
    ws, wr = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.allclose(ws[k], wr[k], atol=1e-6) for k in ws)
    assert not saved[0].exists()  # a finished run removes its resume checkpoint


def test_train_non_finite_loss_stops_and_keeps_last_good_checkpoint(shards, tmp_path):
    params = tiny_params(tmp_path, checkpoint_every=3)
    first = Trainer(params, shards, tmp_path / "out", CPU, None)
    first.run()
    trainer = Trainer(params.model_copy(update={"resume": False}), shards, tmp_path / "out2", CPU, None)
    trainer._save(trainer.resume_dir)  # a good checkpoint at step 0
    with torch.no_grad():
        trainer.model.tok_emb.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite training loss at step 1"):
        trainer.run()
    assert read_meta(trainer.resume_dir).step == 0
    assert not (tmp_path / "out2").exists()


def test_train_ema_weights_are_saved(shards, tmp_path):
    train(tiny_params(tmp_path, ema_decay=0.5), shards, tmp_path / "ema", CPU)
    train(tiny_params(tmp_path), shards, tmp_path / "raw", CPU)
    state = load_file(str(tmp_path / "ema" / "checkpoint" / "train_state.safetensors"))
    saved = weights(tmp_path / "ema")
    raw = {k.removeprefix("raw/"): v for k, v in state.items() if k.startswith("raw/")}
    assert torch.equal(raw["tok_emb.weight"], weights(tmp_path / "raw")["tok_emb.weight"])
    assert not torch.equal(saved["tok_emb.weight"], raw["tok_emb.weight"])


def test_train_wallclock_cap_stops_early(shards, tmp_path):
    result = train(tiny_params(tmp_path, iterations=100_000, max_wallclock_seconds=0.3), shards, tmp_path / "w", CPU)
    assert result.stopped_by == "wallclock" and result.steps < 100_000


def test_train_vocab_must_match_manifest(shards, tmp_path):
    with pytest.raises(ParamsError, match="train.model.vocab_size"):
        train(tiny_params(tmp_path, model=dict(vocab_size=99, layers=1, width=32, heads=2, kv_heads=1)), shards, tmp_path / "v", CPU)


def test_train_missing_shards_is_a_data_error(tmp_path):
    with pytest.raises(DataError):
        train(tiny_params(tmp_path), tmp_path / "nowhere", tmp_path / "o", CPU)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"grad_accum_steps": 3, "nproc": 2}, "multiple of nproc"),
        ({"batch_tokens": 500}, "whole seq_len"),
        ({"val_batch_tokens": 100}, "val_batch_tokens"),
        ({"iterations": 0}, "iterations"),
    ],
)
def test_train_params_reject_malformed(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_params(tmp_path, **bad)


def test_train_schedule_warmdown_by_steps_and_clock():
    assert progress(50, 0.0, 100, 0.0) == 0.5
    assert progress(10, 45.0, 100, 60.0) == 0.75  # the clock is nearer its end
    assert lr_scale(0, 0.5, 0, 0.3, 0.0) == 1.0
    assert lr_scale(0, 0.85, 0, 0.3, 0.0) == pytest.approx(0.5)
    assert lr_scale(0, 1.0, 0, 0.3, 0.1) == pytest.approx(0.1)
    assert lr_scale(1, 0.0, 4, 0.3, 0.0) == pytest.approx(0.5)
    assert muon_momentum(0, 0.85, 0.95, 500) == 0.85
    assert muon_momentum(250, 0.85, 0.95, 500) == pytest.approx(0.90)
    assert muon_momentum(900, 0.85, 0.95, 500) == 0.95


def test_train_stream_is_world_size_independent_and_resumable(shards):
    paths = sorted(shards.glob("fineweb_train_*.bin"))
    one = DistributedBatches(TokenStream(paths), CPU, 64, 32)
    xs_one = [one.next()[0] for _ in range(2)]
    ranks = [DistributedBatches(TokenStream(paths), DistInfo(r, 2, r, torch.device("cpu"), None), 64, 32) for r in range(2)]
    assert all(torch.equal(xs_one[r], ranks[r].next()[0]) for r in range(2))
    position = one.stream.position
    continued = DistributedBatches(TokenStream(paths, position), CPU, 64, 32).next()
    assert torch.equal(continued[0], one.next()[0])


def test_train_stream_wraps_around_shards(shards):
    paths = sorted(shards.glob("fineweb_train_*.bin"))
    stream = TokenStream(paths, StreamPosition(1, 5990))
    chunk = stream.take(20)
    assert len(chunk) == 20 and stream.position == StreamPosition(0, 10)


def test_train_bad_resume_position_and_short_validation(shards, tmp_path):
    paths = sorted(shards.glob("fineweb_train_*.bin"))
    with pytest.raises(DataError, match="shard 5"):
        TokenStream(paths, StreamPosition(5, 0))
    with pytest.raises(DataError, match="fewer than one sequence"):
        validation_tokens(sorted(shards.glob("fineweb_val_*.bin")), 10, 32)


def test_train_default_params_validate():
    assert TrainParams().micro_batch_tokens == 4096


def test_a_micro_batch_is_one_copy_and_x_y_are_its_shifted_views():
    from pgolf.train.data import to_device

    tokens = torch.arange(9)
    local = to_device(tokens, torch.device("cpu"))
    x, y = local[:-1].view(-1, 4), local[1:].view(-1, 4)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()  # one buffer, one copy
