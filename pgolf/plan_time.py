"""pgolf plan, time: training steps and tokens in the wall clock, and evaluation seconds per method.

FLOPs per token (Kaplan et al. 2020, as the records' MFU figures count them): a forward pass costs
2 FLOPs per matmul weight applied (depth recurrence applies a span's weights again) plus causal
attention, 2 * context * width per layer application (QK^T and AV over half the context on
average); training is 3 forward passes. A device row (`pgolf.plan_table.DEVICES`) turns FLOPs
into seconds; evaluation passes are counted per method from its params.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgolf.config.eval import EvalSlidingParams, EvalTiltParams, EvalTTTParams
from pgolf.config.model import ModelParams
from pgolf.config.train import TrainParams
from pgolf.model.recurrence import logical_layers
from pgolf.plan_bytes import TensorInfo
from pgolf.plan_table import Device



@dataclass(frozen=True)
class Shape:
    """What FLOPs depend on: matmul weights applied per token (block and other) and layer applications."""

    block_matmul: int  # per physical layer, summed over layers (weights applied once per layer)
    other_matmul: int  # head and projections outside the blocks (applied once)
    layer_applications: int
    width: int

    def applied(self, layers: int) -> float:
        return self.block_matmul * self.layer_applications / max(layers, 1) + self.other_matmul


def shape_of(model: ModelParams, tensors: list[TensorInfo]) -> Shape:
    """Matmul weights from the census (2-D tensors; the embedding is a lookup unless it is the tied head)."""
    block = sum(t.numel for t in tensors if len(t.shape) == 2 and t.name.startswith("blocks."))
    head = model.vocab_size * model.width if model.tied_embeddings else 0
    other = sum(t.numel for t in tensors if len(t.shape) == 2 and not t.name.startswith("blocks.") and t.name != "tok_emb.weight")
    applications = len(logical_layers(model.layers, model.recur_start, model.recur_end, model.recur_loops))
    if model.shared_blocks:
        applications = model.layers
    return Shape(block, head + other, applications, model.width)


def forward_flops_per_token(shape: Shape, layers: int, context: int) -> float:
    return 2.0 * shape.applied(layers) + 2.0 * shape.layer_applications * context * shape.width


def train_flops_per_token(shape: Shape, layers: int, context: int) -> float:
    return 3.0 * forward_flops_per_token(shape, layers, context)


@dataclass(frozen=True)
class TrainTime:
    tokens_per_s: float
    step_s: float
    steps: int
    tokens: int
    seconds: float
    stopped_by: str  # iterations | wallclock


def train_time(shape: Shape, model: ModelParams, train: TrainParams, device: Device) -> TrainTime:
    """Steps and tokens of the run on `device`: train.iterations, or fewer when the wall clock ends it."""
    flops = train_flops_per_token(shape, model.layers, train.final_seq_len)
    step_s = device.step_overhead_s + train.batch_tokens * flops / device.train_flops_per_s
    steps, stopped = train.iterations, "iterations"
    if train.max_wallclock_seconds and step_s * steps > train.max_wallclock_seconds:
        steps, stopped = int(train.max_wallclock_seconds / step_s), "wallclock"
    return TrainTime(train.batch_tokens / step_s, step_s, steps, steps * train.batch_tokens, steps * step_s, stopped)


def eval_forward_tokens(method: str, params: EvalSlidingParams | EvalTTTParams | EvalTiltParams, device: Device) -> tuple[float, int]:
    """(forward-token equivalents per scored token of the whole stage, the context they run at).

    A stage scores the artifact and, for the quantization gap, the checkpoint the same way
    (`pgolf.eval.run`): two sliding passes; TTT scores frozen (val_bpb_no_ttt), then scores and
    adapts, and the gap's checkpoint pass is frozen (`pgolf.eval.methods`): 3 scoring passes and
    the updates."""
    if isinstance(params, EvalTTTParams):
        update = device.ttt_update_factor if params.lr > 0 else 0.0
        return params.window / params.chunk_tokens * (3.0 + update), params.window
    return 2.0 * params.window / params.stride, params.window


def eval_seconds(shape: Shape, model: ModelParams, method: str, params, val_tokens: int, device: Device) -> float:
    per_token, context = eval_forward_tokens(method, params, device)
    flops = val_tokens * per_token * forward_flops_per_token(shape, model.layers, context)
    return device.eval_overhead_s + flops / device.eval_flops_per_s
