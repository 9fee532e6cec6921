"""Garbage must not pass silently: an exploding loss stops the run, a final model no better than a
uniform guess fails the stage, and out-of-vocabulary token ids are a DataError naming the file.

Each guard is tested as a pure function on recorded or synthetic losses, and once through the real
training loop on tiny shards (a huge learning rate, a wrong-vocabulary shard)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pgolf.config.train import TrainParams
from pgolf.data.shards import write_shard
from pgolf.dist import DistInfo
from pgolf.errors import DataError
from pgolf.train import guards
from pgolf.train.checkpoint import read_meta
from pgolf.train.data import StreamPosition, TokenStream, check_token_ids, validation_tokens
from pgolf.train.guards import TrainingFailed
from pgolf.train.loop import TrainingDiverged, train
from pgolf.train.stage import run_train_stage
from train_helpers import VOCAB, make_shards, markov_stream, tiny_params

torch.set_num_threads(1)
CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)
REPO = Path(__file__).resolve().parents[1]
DEFAULTS = TrainParams()
# Guards off except the one under test, so each loop test shows that guard alone.
NO_DIVERGE = dict(diverge_rise=0.0, diverge_ceiling=0.0)


def huge_lr(lr: float) -> dict:
    return dict(matrix=dict(lr=lr), embed=dict(lr=lr), scalar=dict(lr=lr), head=dict(lr=lr))


def first_divergence(losses: list[float], vocab: int, params: TrainParams = DEFAULTS) -> str | None:
    """Feed a loss curve (step 1 first) through the rule as the loop does; the first reason, or None."""
    best = math.inf
    for step, loss in enumerate(losses, start=1):
        reason = guards.divergence(loss, best, step, vocab, params.diverge_warmup_steps, params.diverge_rise, params.diverge_ceiling)
        if reason:
            return reason
        best = min(best, loss)
    return None


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"))


def with_bad_token(directory: Path, name: str, position: int, bad_id: int) -> Path:
    """A copy of the tiny shards where shard `name` holds `bad_id` at `position`."""
    make_shards(directory)
    tokens = np.fromfile(directory / name, dtype="<u2", offset=1024).astype(np.int64)
    tokens[position] = bad_id
    write_shard(directory / name, tokens)
    return directory


# -- divergence: the rule as a pure function ---------------------------------------------------------


def test_divergence_default_run_curve_never_fires():
    rows = (REPO / "dvclive" / "train" / "plots" / "metrics" / "train" / "loss.tsv").read_text().split("\n")[1:]
    losses = [float(row.split("\t")[1]) for row in rows if row]
    assert len(losses) == DEFAULTS.iterations
    assert first_divergence(losses, 1024) is None


def test_divergence_official_baseline_early_spike_is_inside_warmup():
    # steps 1-4 of the official baseline's train log (vocab 1024): a 2.4 x ln(V) spike that recovers
    spike = [6.9357, 16.7414, 8.7524, 6.5885] + [6.5 - 0.01 * i for i in range(40)]
    assert first_divergence(spike, 1024) is None
    no_warmup = DEFAULTS.model_copy(update={"diverge_warmup_steps": 0})
    assert "step 2 rose more than" in first_divergence(spike, 1024, no_warmup)


def test_divergence_issue_explosion_stops_at_step_2():
    reason = first_divergence([62.0, 6.2e9, 1e12], 1024)
    assert reason.startswith("training loss 6.2e+09 at step 2 is above train.diverge_ceiling")
    assert first_divergence([62.0, 6.2e9], 1024, DEFAULTS.model_copy(update={"diverge_ceiling": 0.0})) is None  # warm-up


def test_divergence_rise_after_warmup_and_off_switches():
    ln_v = math.log(1024)
    curve = [6.9] + [4.0] * 30
    late_jump = curve + [4.0 + 1.01 * ln_v]
    assert "step 32 rose more than" in first_divergence(late_jump, 1024)
    assert first_divergence(curve + [4.0 + 0.99 * ln_v], 1024) is None
    assert first_divergence(late_jump, 1024, DEFAULTS.model_copy(update={"diverge_rise": 0.0})) is None
    early = [6.9, 4.0, 4.0 + 1.5 * ln_v]  # step 3 is inside the 20-step warm-up
    assert first_divergence(early, 1024) is None
    assert guards.divergence(1e6, math.inf, 1, 1024, 20, 1.0, 10.0) is None  # step 1 measures the init only
    assert guards.divergence(math.nan, 1.0, 50, 1024, 20, 1.0, 10.0) is None  # NaN is the loop's own check
    assert guards.divergence(70.0, 3.0, 50, 1024, 20, 0.0, 0.0) is None


def test_final_validation_rule():
    ln_v = math.log(1024)
    reason = guards.final_validation(8.55, 1024, 1.0)
    assert reason == f"final val_loss 8.5500 is not below ln(vocab) = {ln_v:.4f}: the model is no better than a uniform guess over 1024 tokens"
    assert guards.final_validation(ln_v, 1024, 1.0) is not None  # "not below": equal fails
    assert guards.final_validation(math.nan, 1024, 1.0) is not None
    assert guards.final_validation(3.23, 1024, 1.0) is None  # the default run
    assert "0.5 x ln(vocab)" in guards.final_validation(3.5, 1024, 0.5)
    assert guards.final_validation(8.55, 1024, 0.0) is None


@pytest.mark.parametrize("key, value", [("diverge_rise", -1.0), ("diverge_ceiling", -0.1), ("final_val_ceiling", 101.0), ("diverge_warmup_steps", -1)])
def test_guard_params_are_bounded(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        tiny_params(tmp_path, **{key: value})


# -- divergence and the final check through the real loop -------------------------------------------


def test_loop_huge_lr_explosion_stops_at_step_2_and_keeps_last_good_checkpoint(shards, tmp_path):
    # no logit softcap + lr 10: the loss goes 3.9 -> ~94 (24 x ln 48) at step 2, as in the issue
    model = dict(layers=2, width=32, heads=2, kv_heads=1, logit_softcap=None)
    params = tiny_params(tmp_path, model=model, optim=huge_lr(10.0), checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"at step 2 is above train.diverge_ceiling x ln\(vocab\) = 10 x 3.8712; the last good") as info:
        train(params, shards, tmp_path / "out", CPU)
    assert "\n" not in str(info.value)
    resume = next(Path(params.resume_dir).iterdir())
    assert read_meta(resume).step == 1
    assert not (tmp_path / "out").exists()


def test_loop_rise_rule_fires_after_warmup_only(shards, tmp_path):
    # lr 1 spikes the loss 3.9 -> ~14.6 at step 2, then recovers: fatal only without a warm-up
    params = tiny_params(tmp_path, optim=huge_lr(1.0), diverge_warmup_steps=1)
    with pytest.raises(TrainingDiverged, match=r"at step 2 rose more than train.diverge_rise x ln\(vocab\) = 1 x 3.8712 above its minimum 3.8"):
        train(params, shards, tmp_path / "a", CPU)
    recovered = train(params.model_copy(update={"diverge_warmup_steps": 20, "iterations": 20}), shards, tmp_path / "b", CPU)
    assert recovered.val_loss < math.log(VOCAB) - 1.0


def test_stage_worse_than_uniform_fails_writes_no_outputs_and_can_be_accepted(shards, tmp_path):
    """lr 5 never recovers (val_loss ~6 > ln 48 = 3.87): the stage exits 1 with one line, writes
    neither checkpoint nor metrics; turning the check off resumes from the kept state, no retraining."""
    params = tiny_params(tmp_path, optim=huge_lr(5.0), **NO_DIVERGE)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"train": params.model_dump(mode="json")}))
    out, metrics, live = tmp_path / "out", tmp_path / "metrics.json", tmp_path / "live"
    proc = subprocess.run(
        [sys.executable, "stages/train.py", "--params", str(params_file), "--shards", str(shards), "--out", str(out), "--metrics", str(metrics), "--live", str(live)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("train: error: final val_loss ") and f"is not below ln(vocab) = {math.log(VOCAB):.4f}" in error
    assert "train.final_val_ceiling: 0" in error and "more iterations" in error
    failed_val = float(error.split("final val_loss ")[1].split()[0])
    assert failed_val > math.log(VOCAB)
    assert not out.exists() and not metrics.exists()
    kept = next(Path(params.resume_dir).iterdir())
    assert read_meta(kept).step == params.iterations

    accepted = run_train_stage(params.model_copy(update={"final_val_ceiling": 0.0}), shards, out, metrics, live)
    assert accepted.resumed_from_step == params.iterations and accepted.steps == params.iterations
    assert accepted.val_loss == pytest.approx(failed_val, abs=1e-4)
    assert math.isfinite(accepted.train_loss) and json.loads(metrics.read_text())["val_loss"] == accepted.val_loss
    assert read_meta(out / "checkpoint").step == params.iterations
    assert not kept.exists()


def test_loop_final_check_with_ema_keeps_raw_and_ema_weights(shards, tmp_path):
    params = tiny_params(tmp_path, optim=huge_lr(5.0), ema_decay=0.5, **NO_DIVERGE)
    with pytest.raises(TrainingFailed, match="final val_loss") as info:
        train(params, shards, tmp_path / "out", CPU)
    failed_val = float(str(info.value).split("final val_loss ")[1].split()[0])
    accepted = train(params.model_copy(update={"final_val_ceiling": 0.0}), shards, tmp_path / "out", CPU)
    assert accepted.resumed_from_step == params.iterations
    assert accepted.val_loss == pytest.approx(failed_val, abs=1e-4)


# -- out-of-vocabulary token ids ---------------------------------------------------------------------


def test_check_token_ids_names_the_first_bad_id_and_position():
    check_token_ids(np.array([0, 5, 47], dtype=np.uint16), 48, "x.bin")
    check_token_ids(np.array([0, 500], dtype=np.uint16), None, "x.bin")  # no vocabulary: nothing to check
    with pytest.raises(DataError, match=r"^x.bin: token id 48 at position 2 is outside the vocabulary of 48 \(ids 0..60; 2 bad tokens\)"):
        check_token_ids(np.array([0, 5, 48, 60], dtype=np.uint16), 48, "x.bin")
    with pytest.raises(DataError, match="token id -1 at position 1"):
        check_token_ids(np.array([3, -1, 2]), 48, "x.bin")


def test_train_shard_with_out_of_vocab_id_is_a_data_error(tmp_path):
    """Before: IndexError from the embedding (a device-side assert on CUDA)."""
    bad = with_bad_token(tmp_path / "shards", "fineweb_train_000000.bin", 700, 999)
    with pytest.raises(DataError, match=r"fineweb_train_000000.bin: token id 999 at position 700 is outside the vocabulary of 48"):
        train(tiny_params(tmp_path), bad, tmp_path / "out", CPU)
    assert not (tmp_path / "out").exists()


def test_later_train_shard_is_checked_when_the_stream_reaches_it(tmp_path):
    bad = with_bad_token(tmp_path / "shards", "fineweb_train_000001.bin", 3, VOCAB)
    paths = sorted(bad.glob("fineweb_train_*.bin"))
    stream = TokenStream(paths, StreamPosition(0, 5990), VOCAB)  # shard 0 is clean: opening is fine
    with pytest.raises(DataError, match=r"fineweb_train_000001.bin: token id 48 at position 3"):
        stream.take(20)
    with pytest.raises(DataError, match="fineweb_train_000001.bin"):
        TokenStream(paths, StreamPosition(1, 0), VOCAB)  # resuming into it


def test_validation_tokens_out_of_vocab_in_the_used_subset_only(tmp_path):
    bad = with_bad_token(tmp_path / "shards", "fineweb_val_000000.bin", 2000, 60)
    paths = sorted(bad.glob("fineweb_val_*.bin"))
    assert validation_tokens(paths, 1024, 32, VOCAB).numel() == 1025  # the bad id lies beyond the subset
    with pytest.raises(DataError, match=r"fineweb_val_000000.bin: token id 60 at position 2000 is outside the vocabulary of 48"):
        validation_tokens(paths, 0, 32, VOCAB)
    with pytest.raises(DataError, match="token id 60 at position 2000"):
        train(tiny_params(tmp_path, val_tokens=0), bad, tmp_path / "out", CPU)


def test_clean_shards_give_the_same_tokens_with_the_check(shards):
    paths = sorted(shards.glob("fineweb_val_*.bin"))
    assert torch.equal(validation_tokens(paths, 1024, 32, VOCAB), validation_tokens(paths, 1024, 32))
    assert torch.equal(validation_tokens(paths, 0, 32, VOCAB), torch.from_numpy(markov_stream(3000, 0)[: (2999 // 32) * 32 + 1]))
