"""Params section `train`: the model shape (`train.model`), the optimizers (`train.optim`), the
schedule, batching, validation, checkpointing and distribution of the training stage.

Defaults train a small model on a 2-core CPU in about two minutes; the official baseline's values
are given in each description as "official: ...".
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pgolf.config.base import Section
from pgolf.config.model import ModelParams

BASELINE_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
SeqLenPoint = tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[int, Field(ge=2, le=65536)]]


class AdamGroupParams(Section):
    """One Adam parameter group (embeddings, output head, or scalars/vectors)."""

    lr: float = Field(..., ge=0.0, le=10.0, description="peak learning rate")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam beta1 (official: 0.9)")
    beta2: float = Field(0.95, ge=0.0, lt=1.0, description="Adam beta2 (official: 0.95)")
    eps: float = Field(1.0e-8, gt=0.0, le=1.0, description="Adam epsilon (official: 1e-8)")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="decoupled (AdamW) weight decay; 0 = plain Adam")


class MuonParams(Section):
    """The Muon group: 2-D matrices inside the blocks."""

    lr: float = Field(0.04, ge=0.0, le=10.0, description="peak learning rate (official: 0.04)")
    momentum: float = Field(0.95, ge=0.0, lt=1.0, description="momentum after warm-up (official: 0.95; frontier: 0.97)")
    momentum_warmup_start: float = Field(0.85, ge=0.0, lt=1.0, description="momentum at step 0, linear to `momentum` (official: 0.85)")
    momentum_warmup_steps: int = Field(100, ge=0, description="steps of momentum warm-up; 0 = none (official: 500)")
    nesterov: bool = Field(True, description="Nesterov momentum (official: true)")
    ns_steps: int = Field(5, ge=1, le=20, description="Newton-Schulz iterations (official: 5)")
    ns_coefficients: list[list[float]] = Field(
        [list(BASELINE_NS_COEFFICIENTS)],
        min_length=1,
        description="(a, b, c) per Newton-Schulz iteration: one triple reused every step, or ns_steps triples (a schedule)",
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="decoupled weight decay, p -= lr*wd*p (frontier: ~0.04)")
    row_normalize: bool = Field(
        False,
        description="MuonEq-R (PR #1285): divide each row of the momentum direction by its L2 norm before Newton-Schulz (records: on)",
    )

    @model_validator(mode="after")
    def _coefficients(self) -> MuonParams:
        if any(len(triple) != 3 for triple in self.ns_coefficients):
            raise ValueError("ns_coefficients: each entry must be an (a, b, c) triple")
        if len(self.ns_coefficients) not in (1, self.ns_steps):
            raise ValueError(f"ns_coefficients: give 1 triple or ns_steps={self.ns_steps} triples, got {len(self.ns_coefficients)}")
        return self


class OptimParams(Section):
    """`train.optim`: Muon for block matrices, Adam for embeddings, head and scalars."""

    matrix: MuonParams = Field(default_factory=MuonParams, description="Muon group: 2-D block matrices")
    embed: AdamGroupParams = Field(AdamGroupParams(lr=0.05), description="token embedding (official: 0.05 tied, 0.6 untied)")
    head: AdamGroupParams = Field(AdamGroupParams(lr=0.008), description="untied output head (official: 0.008)")
    scalar: AdamGroupParams = Field(AdamGroupParams(lr=0.04), description="vectors and scalars: gains, mixes, skip weights (official: 0.04)")
    hyper: AdamGroupParams = Field(AdamGroupParams(lr=0.01), description="the hypernetwork of train.model.block_linear=hyper (PR #16), which generates every block matrix (0.01 trained the CPU model; the scalar group's 0.04 barely did)")
    grad_clip_norm: float = Field(0.0, ge=0.0, description="clip the global gradient norm; 0 = off (official: 0)")


class TrainParams(Section):
    """`train`: the training stage."""

    model: ModelParams = Field(default_factory=ModelParams, description="architecture")
    optim: OptimParams = Field(default_factory=OptimParams, description="optimizers")
    seed: int = Field(1337, ge=0, description="seed of the initialization (data order is the fixed shard order)")
    iterations: int = Field(300, ge=1, description="optimizer steps (official: 20000); the run stops at this or the wall-clock cap")
    max_wallclock_seconds: float = Field(0.0, ge=0.0, description="stop training after this many seconds, warmdown timed from the clock; 0 = no cap (official: 600)")
    lr_warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps (official: 0)")
    warmdown_fraction: float = Field(0.3, ge=0.0, le=1.0, description="last fraction of the run (steps or wall-clock) with a linear lr decay (official: 1200/20000)")
    final_lr_fraction: float = Field(0.0, ge=0.0, le=1.0, description="lr multiplier reached at the end of warmdown (records: 0.1)")
    final_lr_mode: Literal["linear", "clamp"] = Field(
        "linear",
        description="linear: the warmdown goes linearly from 1 to final_lr_fraction; clamp: linearly toward 0, held at "
        "final_lr_fraction (records' MIN_LR, PR #1787: max((1 - progress)/warmdown_fraction, floor))",
    )
    batch_tokens: int = Field(4096, ge=1, description="tokens per optimizer step over all ranks (official: 524288)")
    seq_len: int = Field(256, ge=2, le=65536, description="training sequence length (official: 1024); the first length when seq_len_schedule is set")
    seq_len_schedule: list[SeqLenPoint] = Field(
        default_factory=list,
        description="[[progress, seq_len], ...]: progressive context, seq_len from that fraction of the run on (the lr schedule's "
        "progress), batch_tokens unchanged; [] = seq_len throughout (#2014: seq_len 1024, [[0.1, 2048], [0.7, 3072]]). The "
        "training stage validates at the final length, the one the model ends at and the records evaluate at",
    )
    loader: Literal["sequential", "packed"] = Field(
        "sequential",
        description="sequential: the official loader, rows of seq_len; packed: the records' document packing, one row per "
        "micro-batch from a BOS on, attention kept inside documents and pieces of at most seq_len (needs model.doc_attention)",
    )
    grad_accum_steps: int = Field(1, ge=1, le=4096, description="micro-batches per step summed over all ranks (official: 8); a multiple of nproc * nnodes")
    val_every: int = Field(100, ge=0, description="validate every N steps (and always at the end); 0 = only at the end")
    val_tokens: int = Field(131072, ge=0, description="size of the fixed validation subset (first N val tokens); 0 = the whole val split")
    val_batch_tokens: int = Field(32768, ge=1, description="tokens per validation forward pass over all ranks")
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0, description="EMA of weights, saved instead of the raw weights; 0 = off (frontier: ~0.997)")
    checkpoint_every: int = Field(200, ge=0, description="save a resumable checkpoint every N steps; 0 = only on interrupt")
    resume: bool = Field(True, description="continue from the resume checkpoint of the same params and data if one exists")
    resume_dir: str = Field(".cache/pgolf/train-resume", min_length=1, description="where resumable checkpoints live (outside DVC outs, which DVC deletes before a run)")
    log_every: int = Field(50, ge=1, description="log the train loss every N steps")
    nproc: int = Field(1, ge=1, le=64, description="processes per node; > 1 relaunches the stage under torchrun (NCCL on CUDA, gloo on CPU)")
    nnodes: int = Field(1, ge=1, le=1024, description="machines; > 1 runs torchrun on each with the same params but its own node_rank, meeting at rdzv_endpoint")
    node_rank: int = Field(0, ge=0, description="this machine's index in 0..nnodes-1; node 0 hosts the rendezvous and writes every output")
    rdzv_endpoint: str | None = Field(None, description="host:port of node 0's rendezvous store, reachable from every node; required when nnodes > 1")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if available")
    compile: bool = Field(False, description="torch.compile the model (CUDA only; ignored on CPU)")
    threads: int = Field(0, ge=0, le=1024, description="CPU threads for torch; 0 = torch's default")
    diverge_warmup_steps: int = Field(20, ge=0, description="steps before diverge_rise applies (early spikes are normal: official baseline 2.4 x ln(vocab) at step 2)")
    diverge_rise: float = Field(1.0, ge=0.0, le=100.0, description="stop when the train loss rises more than this x ln(vocab) above its running minimum (after diverge_warmup_steps); 0 = off")
    diverge_ceiling: float = Field(10.0, ge=0.0, le=1000.0, description="stop when the train loss exceeds this x ln(vocab) at any step after the first; 0 = off")
    final_val_ceiling: float = Field(1.0, ge=0.0, le=100.0, description="fail the run when the final val_loss is not below this x ln(vocab) (1 = a uniform guess); 0 = off")

    @model_validator(mode="after")
    def _batching(self) -> TrainParams:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"nnodes ({self.nnodes}) > 1 needs rdzv_endpoint (host:port of node 0)")
        if self.rdzv_endpoint is not None and not _is_endpoint(self.rdzv_endpoint):
            raise ValueError(f"rdzv_endpoint must be host:port with a port in 1..65535, got {self.rdzv_endpoint!r}")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank ({self.node_rank}) must be < nnodes ({self.nnodes})")
        if self.grad_accum_steps % self.world_size:
            raise ValueError(f"grad_accum_steps ({self.grad_accum_steps}) must be a multiple of nproc * nnodes ({self.world_size})")
        micro = self.batch_tokens // self.grad_accum_steps
        if self.batch_tokens % self.grad_accum_steps or micro % self.seq_len:
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must split into grad_accum_steps ({self.grad_accum_steps}) "
                f"micro-batches of whole seq_len ({self.seq_len}) sequences"
            )
        self._check_seq_len_schedule(micro)
        final = self.final_seq_len
        if self.val_batch_tokens % (final * self.world_size):
            raise ValueError(f"val_batch_tokens ({self.val_batch_tokens}) must be a multiple of the final seq_len * nproc * nnodes ({final * self.world_size})")
        if self.loader == "packed" and not self.model.doc_attention:
            raise ValueError("loader: packed needs model.doc_attention: true (evaluation must keep documents apart as training does)")
        return self

    @property
    def world_size(self) -> int:
        """Ranks over all nodes."""
        return self.nproc * self.nnodes

    def _check_seq_len_schedule(self, micro: int) -> None:
        points = [at for at, _ in self.seq_len_schedule]
        if any(b <= a for a, b in zip(points, points[1:])):
            raise ValueError(f"seq_len_schedule: progress points must increase, got {points}")
        for at, length in self.seq_len_schedule:
            if micro % length:
                raise ValueError(
                    f"seq_len_schedule: seq_len {length} at progress {at} does not divide the micro-batch of {micro} tokens (batch_tokens/grad_accum_steps)"
                )

    @property
    def micro_batch_tokens(self) -> int:
        return self.batch_tokens // self.grad_accum_steps

    @property
    def final_seq_len(self) -> int:
        """The training length at the end of the run: the validation length."""
        return self.seq_len_schedule[-1][1] if self.seq_len_schedule else self.seq_len


def _is_endpoint(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
