"""The training loop: build, optionally resume, step until the step budget or the wall-clock cap,
validate, checkpoint, and save the final model.

Resuming: every `checkpoint_every` steps, and on SIGINT/SIGTERM, rank 0 writes a resumable
checkpoint to `<resume_dir>/<fingerprint>/` (outside the DVC outs, which DVC deletes before a run).
With `train.resume` on, a later run with the same numerics-relevant params and the same shards
continues from it (the DVCLive curves up to that step are kept in it too and put back, since DVC
deletes the plots before a run); a finished run deletes it.

Guards (pgolf/train/guards.py): a non-finite or exploding training loss stops the run at once,
keeping the last good resume checkpoint; a final validation loss no better than a uniform guess
fails the run with no checkpoint or metrics written to the outputs (the trained state is kept as a
resume checkpoint, so turning the check off finishes without retraining).

Schedules (pgolf/train/schedule.py `settings_at`): before each step the lr, Muon momentum, training
length (`seq_len_schedule`) and, for a model with depth recurrence, whether recurrence is on
(`model.recur_from_progress`) follow the run's progress. Validation runs at the final training
length; mid-run validation sees the model as it trains, the final validation and the saved model
have recurrence on. Under torch.compile each new length and the recurrence switch recompile once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from pgolf.config.calibrate import CalibrateParams
from pgolf.config.train import ModelParams, TrainParams
from pgolf.data.shards import list_shards
from pgolf.dist import DistInfo, barrier, broadcast_params, start_sum, sum_in_place, sum_over_ranks
from pgolf.errors import DataError, ParamsError
from pgolf.io import read_json
from pgolf.ledger import Phases
from pgolf.model import GPT, count_params
from pgolf.model.checkpoint import read_weights
from pgolf.optim import build_optimizers, set_schedule
from pgolf.optim.groups import full_optimizer_state
from pgolf.optim.muon import Shard
from pgolf.train import checkpoint as ckpt
from pgolf.train import guards
from pgolf.train.calibration import check_calibration, collect_on_ranks, save_rank_hessians
from pgolf.train.curves import Curves
from pgolf.train.ddp import OverlappedReduce
from pgolf.train.data import Batch, StreamPosition, TokenStream, validation_tokens
from pgolf.train.ema import EMA
from pgolf.train.evaluate import validation_loss
from pgolf.train.packed import LOADERS
from pgolf.train.schedule import StepSettings, settings_at
from pgolf.train.signals import StopRequest

log = logging.getLogger(__name__)

# Keys that do not change the numbers a run produces: they stay out of the resume fingerprint.
OPERATIONAL_KEYS = (
    "resume", "resume_dir", "checkpoint_every", "log_every", "val_every", "nproc", "compile", "threads",
    "diverge_warmup_steps", "diverge_rise", "diverge_ceiling", "final_val_ceiling",
)
CHECKPOINT_SUBDIR = "checkpoint"
LIVE_SUBDIR = "dvclive"  # inside a resume checkpoint: the curves up to its step


class TrainingDiverged(guards.TrainingFailed):
    """The training loss became NaN or infinite, or exploded (see guards.divergence)."""


@dataclass(frozen=True)
class TrainResult:
    steps: int
    tokens_seen: int
    train_loss: float
    val_loss: float
    tokens_per_second: float
    wallclock_seconds: float
    params_count: int
    stopped_by: str  # "iterations" | "wallclock"
    resumed_from_step: int
    calibrate_seconds: float = 0.0  # GPTQ calibration on the training ranks after the loop (calibrate.on_train_ranks)
    phases: dict[str, float] = field(default_factory=dict)  # the timing ledger's phases (pgolf.ledger), rank 0's

    TIMING = ("tokens_per_second", "wallclock_seconds", "calibrate_seconds", "phases")  # change run to run: kept apart from the metrics

    def metrics(self) -> dict[str, float | int | str]:
        """What a seed fixes (metrics/train.json)."""
        return {k: v for k, v in asdict(self).items() if k not in self.TIMING}

    def timing(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.TIMING}


def resolve_model_config(model: ModelParams, shards_dir: Path) -> ModelParams:
    """Fill in vocab_size from the shards' manifest.json (or check the given one against it)."""
    manifest_path = shards_dir / "manifest.json"
    if not manifest_path.is_file():
        if model.vocab_size is None:
            raise DataError(f"{manifest_path}: not found, and train.model.vocab_size is null")
        return model
    vocab = read_json(manifest_path, "shard manifest").get("vocab_size")
    if not isinstance(vocab, int):
        raise DataError(f"{manifest_path}: has no integer vocab_size")
    if model.vocab_size is not None and model.vocab_size != vocab:
        raise ParamsError(f"train.model.vocab_size: {model.vocab_size} differs from the shards' vocab_size {vocab} ({manifest_path})")
    return model.model_copy(update={"vocab_size": vocab})


def autocast_for(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def next_token_loss(model: GPT, x: Tensor, y: Tensor, segments: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of the targets y [B, T] given x [B, T], in fp32. Compiled whole on CUDA (as
    the official train_gpt.py's forward returns its loss), so the softcap, the fp32 cast and the loss
    fuse into the graph instead of materializing [B*T, V] fp32 logits and log-probs outside it."""
    logits = model(x) if segments is None else model(x, segments=segments)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


class Trainer:
    """State of one run on one rank. `run()` trains and returns the result."""

    def __init__(
        self, params: TrainParams, shards_dir: Path, out_dir: Path, info: DistInfo, live_dir: Path | None, calibration: CalibrateParams | None = None
    ) -> None:
        self.params, self.info, self.out_dir = params, info, out_dir
        self.shards_dir, self.calibration = shards_dir, calibration
        if calibration is not None:
            check_calibration(calibration, shards_dir, info.world_size)
        config = resolve_model_config(params.model, shards_dir)
        train_paths, val_paths = list_shards(shards_dir, "train"), list_shards(shards_dir, "val")
        torch.manual_seed(params.seed)
        self.model = GPT(config).to(info.device)
        broadcast_params(self.model.parameters(), info)
        use_compile = params.compile and info.device.type == "cuda"
        shard = Shard(info.rank, info.world_size, functools.partial(sum_in_place, info=info))
        self.optimizers = build_optimizers(self.model, params.optim, shard, compile_muon=use_compile)
        self.ema = EMA(self.model, params.ema_decay) if params.ema_decay > 0 else None
        self.reducer = OverlappedReduce(self.model.parameters(), functools.partial(start_sum, info=info), info.world_size) if info.distributed else None
        run_keys = params.model_dump(mode="json", exclude=set(OPERATIONAL_KEYS))
        run_keys["model"] = config.model_dump(mode="json")
        self.fingerprint = ckpt.fingerprint(run_keys, train_paths + val_paths)
        self.resume_dir = Path(params.resume_dir) / self.fingerprint
        self.vocab_size: int = config.vocab_size  # filled in from the manifest by resolve_model_config
        self.step, self.tokens_seen, self.train_seconds = 0, 0, 0.0
        self.best_loss, self.last_loss = math.inf, math.nan  # lowest and latest training loss (guards, result)
        self.seq_len, self.recurrence = params.seq_len, None  # as last applied; None: not yet set
        position = self._maybe_resume() if params.resume else StreamPosition()
        self.start_step = self.step
        stream = TokenStream(train_paths, position, self.vocab_size)
        self.batches = LOADERS[params.loader](stream, info, params.micro_batch_tokens, params.seq_len, config.bos_id)
        self.val_tokens = validation_tokens(val_paths, params.val_tokens, params.final_seq_len, self.vocab_size)
        self.forward: Callable[..., Tensor] = torch.compile(self.model) if use_compile else self.model  # validation
        self.loss_of: Callable[..., Tensor] = torch.compile(next_token_loss) if use_compile else next_token_loss
        self.autocast = autocast_for(info.device)
        self.accum = params.grad_accum_steps // info.world_size
        self.live_dir = live_dir if info.is_main else None
        if self.live_dir is not None and self.start_step > 0 and (self.resume_dir / LIVE_SUBDIR).is_dir():
            # DVC deleted the plots before this run: restore the curves up to the resume step.
            shutil.rmtree(self.live_dir, ignore_errors=True)
            shutil.copytree(self.resume_dir / LIVE_SUBDIR, self.live_dir)
        self.curves = Curves(self.live_dir, resume=self.start_step > 0)

    def _maybe_resume(self) -> StreamPosition:
        if not (self.resume_dir / ckpt.META_FILE).is_file():
            return StreamPosition()
        meta = ckpt.read_meta(self.resume_dir)
        state = ckpt.read_state(self.resume_dir)
        weights = read_weights(self.resume_dir)
        raw = {k.removeprefix("raw/"): v for k, v in state.items() if k.startswith("raw/")} if self.ema else weights
        self.model.load_state_dict(raw, strict=True)
        if self.ema is not None:
            self.ema.load_state_dict(weights)
        ckpt.load_optimizer_tensors(self.model, self.optimizers, state)
        self.step, self.tokens_seen = meta.step, meta.tokens_seen
        self.train_seconds = float(state["train_seconds"].item()) if "train_seconds" in state else 0.0
        self.best_loss = float(state["best_train_loss"].item()) if "best_train_loss" in state else math.inf
        self.last_loss = float(state["train_loss"].item()) if "train_loss" in state else math.nan
        log.info(f"resume: step {meta.step} from {self.resume_dir}")
        return meta.data_position

    # -- one optimizer step ------------------------------------------------------------------------
    def _loss(self, batch: Batch) -> Tensor:
        with self.autocast():
            return self.loss_of(self.model, batch.x, batch.y, batch.segments)

    def train_step(self, seq_len: int | None = None) -> Tensor:
        """Forward/backward over this rank's micro-batches (rows of `seq_len`, default train.seq_len),
        averaging gradients over ranks during the last backward (pgolf/train/ddp.py), step. Returns
        the mean loss."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.info.device)
        for i in range(self.accum):
            batch = self.batches.next(seq_len)
            if self.reducer is not None and i == self.accum - 1:
                self.reducer.arm()  # this backward reduces gradients over ranks as they fill buckets
            loss = self._loss(batch)
            (loss / self.accum).backward()
            total += loss.detach()
        if self.reducer is not None:
            self.reducer.finish()
        if self.params.optim.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.optim.grad_clip_norm)
        for opt in self.optimizers:
            opt.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return total / self.accum

    # -- checkpoints -------------------------------------------------------------------------------
    def _save(self, directory: Path, raw: dict[str, Tensor] | None = None, resumable: bool = True) -> None:
        """Rank 0 writes a checkpoint; `raw` overrides the training weights (after the EMA swap-in).
        The final checkpoint (`resumable=False`, a DVC output) holds no wall-clock figure, so a seed
        fixes its bytes."""
        with full_optimizer_state(self.optimizers):  # every rank: sharded Muon's momentum whole for the save
            self._write(directory, raw, resumable)
        barrier(self.info)

    def _write(self, directory: Path, raw: dict[str, Tensor] | None, resumable: bool) -> None:
        if self.info.is_main:
            raw = raw if raw is not None else self.model.state_dict()
            weights = self.ema.state_dict() if self.ema is not None else raw
            state = ckpt.optimizer_tensors(self.model, self.optimizers)
            if resumable:
                state["train_seconds"] = torch.tensor(self.train_seconds, dtype=torch.float64)
            state["best_train_loss"] = torch.tensor(self.best_loss, dtype=torch.float64)
            state["train_loss"] = torch.tensor(self.last_loss, dtype=torch.float64)
            if self.ema is not None:
                state.update({f"raw/{k}": v for k, v in raw.items()})
            meta = ckpt.CheckpointMeta(
                model_config=self.model.config.model_dump(mode="json"),
                step=self.step,
                tokens_seen=self.tokens_seen,
                data_position=self.batches.stream.position,
                seed=self.params.seed,
                ema=self.ema is not None,
                fingerprint=self.fingerprint,
                params=self.params.model_dump(mode="json"),
            )
            ckpt.save_checkpoint(directory, meta, weights, state)

    def _save_resumable(self, raw: dict[str, Tensor] | None = None) -> None:
        """A resume checkpoint plus a copy of the curves so far (rank 0 writes)."""
        self._save(self.resume_dir, raw)
        if self.live_dir is not None and self.live_dir.is_dir():
            shutil.copytree(self.live_dir, self.resume_dir / LIVE_SUBDIR, dirs_exist_ok=True)

    def _apply(self, now: StepSettings) -> StepSettings:
        """Set this step's lr and momentum, and recurrence when it changes; log length changes."""
        set_schedule(self.optimizers, now.lr_scale, now.momentum)
        if now.recurrence is not None and now.recurrence != self.recurrence:
            self._apply_recurrence(now.recurrence)
        if now.seq_len != self.seq_len:
            self.seq_len = now.seq_len
            log.info(f"step: {self.step} seq_len: {now.seq_len}")
        return now

    def _apply_recurrence(self, active: bool) -> None:
        self.model.set_recurrence(active)
        self.recurrence = active
        log.info(f"step: {self.step} depth recurrence: {'on' if active else 'off'}")

    def _kept(self) -> str:
        return f"the last good checkpoint is kept in {self.resume_dir}" if self.resume_dir.exists() else "no checkpoint was saved"

    def validate(self) -> float:
        self.model.eval()
        value = validation_loss(self.forward, self.val_tokens, self.params.final_seq_len, self.params.val_batch_tokens, self.info, self.autocast)
        self.model.train()
        return value

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, phases: Phases | None = None) -> TrainResult:
        """Train; `phases` records compile_warmup (the session's first step), loop and hessians."""
        p, info, phases = self.params, self.info, phases if phases is not None else Phases()
        first_step_seconds = 0.0
        params_count = count_params(self.model)
        log.info(f"params_count: {params_count}")
        log.info(f"fingerprint: {self.fingerprint}")
        session_tokens, session_seconds, stopped_by = 0, 0.0, "iterations"
        bar = tqdm(total=p.iterations, initial=self.step, disable=None if info.is_main else True, mininterval=1.0, desc="train")
        with StopRequest() as stop, phases("loop"):
            while True:
                if self.step >= p.iterations:
                    break
                if p.max_wallclock_seconds and self.train_seconds >= p.max_wallclock_seconds:
                    stopped_by = "wallclock"
                    break
                now = self._apply(settings_at(p, self.step, self.train_seconds))
                t0 = time.perf_counter()
                loss = self.train_step(now.seq_len)
                local = torch.stack((loss.float(), (~torch.isfinite(loss)).float(), torch.tensor(float(stop.requested), device=info.device)))
                agreed = sum_over_ranks(local, info).tolist()  # a sync point: the step is finished here
                dt = time.perf_counter() - t0
                step_seconds = float(sum_over_ranks(torch.tensor([dt], dtype=torch.float64, device=info.device), info)[0]) / info.world_size
                if agreed[1] > 0:
                    raise TrainingDiverged(
                        f"non-finite training loss at step {self.step + 1}; {self._kept()} (lower the learning rates, or set train.resume: false)"
                    )
                loss_value = float(agreed[0]) / info.world_size
                diverged = guards.divergence(
                    loss_value, self.best_loss, self.step + 1, self.vocab_size, p.diverge_warmup_steps, p.diverge_rise, p.diverge_ceiling
                )
                if diverged:
                    raise TrainingDiverged(f"{diverged}; {self._kept()} (lower the learning rates, or set train.resume: false)")
                self.best_loss, self.last_loss = min(self.best_loss, loss_value), loss_value
                self.step += 1
                if self.step == self.start_step + 1:
                    first_step_seconds = dt
                self.tokens_seen += p.batch_tokens
                session_tokens += p.batch_tokens
                session_seconds += step_seconds
                self.train_seconds += step_seconds
                tokens_per_second = session_tokens / max(session_seconds, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)
                lrs = {f"lr/{g['group_name']}": g["lr"] for opt in self.optimizers for g in opt.param_groups}
                self.curves.log(self.step, {"train/loss": loss_value, **lrs})  # throughput: log lines and timing only
                if self.step % p.log_every == 0 or self.step == 1:
                    log.info(f"step: {self.step} train_loss: {loss_value:.4f} lr_scale: {now.lr_scale:.4f} tokens_per_second: {tokens_per_second:.0f}")
                if p.val_every and self.step % p.val_every == 0 and self.step < p.iterations:
                    val = self.validate()
                    self.curves.log(self.step, {"val/loss": val})
                    log.info(f"step: {self.step} val_loss: {val:.4f}")
                if p.checkpoint_every and self.step % p.checkpoint_every == 0:
                    self._save_resumable()
                if agreed[2] > 0:
                    self._save_resumable()
                    bar.close()
                    log.info(f"interrupted: step {self.step}; resumable checkpoint in {self.resume_dir}")
                    raise KeyboardInterrupt
        bar.close()
        phases.move(first_step_seconds, "loop", "compile_warmup")
        if self.recurrence is False:
            self._apply_recurrence(True)  # evaluation and the saved model use it
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            self.model.load_state_dict(self.ema.state_dict(), strict=True)
        hessians, calibrate_seconds = None, 0.0
        if self.calibration is not None:  # right after the loop, on the weights that get quantized
            with phases("hessians"):
                hessians, calibrate_seconds = collect_on_ranks(self.model, self.shards_dir, self.calibration, p.final_seq_len, info, self.autocast)
            log.info(f"train + calibration: {self.train_seconds:.1f} + {calibrate_seconds:.1f} = {self.train_seconds + calibrate_seconds:.1f} s")
        val = self.validate()
        failure = guards.final_validation(val, self.vocab_size, p.final_val_ceiling)
        if failure:
            self._save_resumable(raw)  # the trained state, outside DVC's outs: no retraining to accept it
        self.curves.log(self.step, {"val/loss": val})
        self.curves.close()
        log.info(f"step: {self.step} val_loss: {val:.4f} (final{', EMA weights' if self.ema else ''})")
        if failure:
            accept = "the next run resumes from it" if p.resume else "with train.resume: true the next run resumes from it"
            raise guards.TrainingFailed(
                f"{failure}; no checkpoint or metrics written, the trained state is kept in {self.resume_dir} (try more "
                f"iterations or other learning rates, and check the shards' tokenizer; to keep this model set "
                f"train.final_val_ceiling: 0, {accept})"
            )
        self._save(self.out_dir / CHECKPOINT_SUBDIR, raw, resumable=False)
        if hessians is not None and info.is_main:
            save_rank_hessians(hessians, self.out_dir / CHECKPOINT_SUBDIR, self.shards_dir, self.calibration, p.final_seq_len, info.world_size)
        if info.is_main and self.resume_dir.exists():
            shutil.rmtree(self.resume_dir)
        return TrainResult(
            steps=self.step,
            tokens_seen=self.tokens_seen,
            train_loss=self.last_loss,
            val_loss=val,
            tokens_per_second=session_tokens / max(session_seconds, 1e-9),
            wallclock_seconds=self.train_seconds,
            params_count=params_count,
            stopped_by=stopped_by,
            resumed_from_step=self.start_step,
            calibrate_seconds=calibrate_seconds,
            phases=dict(phases.seconds),
        )


def train(
    params: TrainParams, shards_dir: Path, out_dir: Path, info: DistInfo, live_dir: Path | None = None, calibration: CalibrateParams | None = None
) -> TrainResult:
    """Train per `params` on the shards in `shards_dir`; the final checkpoint goes to `out_dir/checkpoint`.
    With `calibration`, GPTQ Hessians are collected on the ranks right after the loop and written
    into the checkpoint directory (pgolf/train/calibration.py)."""
    phases = Phases()
    with phases("startup"):
        trainer = Trainer(params, Path(shards_dir), Path(out_dir), info, live_dir, calibration)
    return trainer.run(phases)
