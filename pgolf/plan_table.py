"""pgolf plan, data: the byte model's fitted constants and the throughput of each device kind.

Data only, each value with its source. The byte constants were fitted on packs measured with this
repository's quantizer and packer (`pgolf.plan_bytes` documents the model); the device rows
convert a published or measured step time of a reference model into FLOP/s (6 x matmul params
per token plus attention, `pgolf.plan_time.train_flops_per_token`), so that other shapes scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ByteModel:
    gptq_noise: float  # GPTQ's error feedback: symbol variance 1 + noise * step^2 / 12 (in row stds)
    coder_ratio: dict[str, float]  # coded bytes (the ans model included) / Gaussian entropy, per group
    embedding_ratio: dict[str, tuple[tuple[float, float], ...]]  # corpus -> (log10 training tokens per vocab row, coded / Gaussian bits)
    scale_ratio: float  # compressed / raw float16 per-row scales
    plain_vector_ratio: float  # compressed / raw passthrough vectors (norm scales, gains, mixes)
    plain_matrix_ratio: float  # compressed / raw passthrough matrices below quantize.min_numel
    float_ratio: float  # compressed / raw float16 extras (LQER factors)
    salient_ratio: float  # compressed / raw bits of AWQ-lite remainders
    row_refs_bytes: float  # the int32 row-reference stream (pack.row_refs)
    container_base: float  # header bytes independent of the tensor count
    container_per_entry: float  # header bytes per tensor-table entry


# Fitted on packs of checkpoints other than the committed default run's and the tiny profile's
# (held out: `pgolf plan --check` and tests report their errors), issue 16, 2026-12-01: the default
# 4x128 checkpoint re-quantized (GPTQ, pack defaults) at bits 4-8 x k 8/12/16 except its own
# 6/6/7 @ 12 (14 packs); the tiny profile's 2x64 vocab-384 model trained 4/30/60/120/240 steps
# on pydoc (not its 12); a 2x64 model trained 60 steps on the default corpus.
# Attention/MLP: 1.2 % rms error of coded bits per symbol over those packs. Whole bytes_model of
# the fitted packs: mean |error| 0.74 %, max 2.1 %; held out: the default run +0.77 %, the tiny
# run's checkpoint at 4 settings +1.4 % (its own), +1.9, +1.7, -1.4 %, a 6x96 MLP-3x model (60
# steps, default corpus; measured after the fit) at 5/6/7 bits -0.66, +0.13, -0.15 %.
# The embedding ratio is the least certain: it falls with the share of rarely trained vocabulary
# rows (near-duplicates after training), which depends on the corpus and tokenizer as much as on
# training length: pydoc (tiny profile) sits near 0.55 where the default corpus is at 0.86-0.91.
# Keyed by `fetch.builtin` corpus; "*" (the default corpus) for every other, FineWeb included
# (unmeasured there); held flat outside the measured range.
BYTE_MODEL = ByteModel(
    gptq_noise=0.95,
    coder_ratio={"attention": 1.010, "mlp": 1.004, "embedding": 1.0, "other": 1.0},
    embedding_ratio={
        "pydoc_topics": ((1.03, 0.477), (1.9, 0.55), (2.2, 0.557), (2.51, 0.556), (2.81, 0.544)),
        "*": ((2.38, 0.863), (3.08, 0.906)),
    },
    scale_ratio=0.652,
    plain_vector_ratio=0.652,
    plain_matrix_ratio=0.847,
    float_ratio=0.847,
    salient_ratio=1.0,
    row_refs_bytes=519.0,
    container_base=575.0,
    container_per_entry=0.78,
)


@dataclass(frozen=True)
class Device:
    """One device kind: training and evaluation FLOP/s of pgolf's (or the records') code on it."""

    name: str
    train_flops_per_s: float  # whole machine, all its accelerators
    step_overhead_s: float  # per optimizer step, independent of the model (launches, Python)
    eval_flops_per_s: float  # pgolf's evaluation (fp32 eager today), whole machine
    eval_overhead_s: float  # per evaluation stage: loading, the legality probe's reruns
    ttt_update_factor: float  # a TTT update (a fresh forward, the LoRA backward, the optimizer) in forward passes
    source: str


# FLOP/s = tokens/s x FLOPs per token of the reference shape (pgolf.plan_time; tests recompute them).
DEVICES: dict[str, Device] = {
    device.name: device
    for device in (
        # Two runs on 2 shared CPU cores (train.threads 2): the default 4x128 (14,268 tok/s at 4,096
        # tokens/step, 4.33 MFLOP/token) and the tiny profile's 2x64 (16,824 tok/s at 1,024, 0.59
        # MFLOP/token) solved for FLOP/s and per-step overhead; evaluation likewise from eval@sliding
        # (12.3 s and 0.49 s), the TTT update factor from the default eval@ttt (47.2 s). Timings on a
        # shared machine vary 2x run to run.
        Device("cpu", 7.58e10, 0.053, 1.46e11, 0.44, 4.88, "2 CPU cores: this repo's default and tiny runs (metrics/timing)"),
        # PR #2135 (CHALLENGE.md): 120.1 ms/step at 786,432 tokens/step, 11x512 MLP 4x, layers 3-5
        # looped twice, vocab 8192, seq 2048: 426.4 MFLOP/token. Evaluation: 8 x pgolf's fp32 rate
        # on one H200 (baseline plain 1024: 410,988 tok/s x 43.5 MFLOP; frontier shapes run 1.6x
        # faster), TTT update factor from its LoRA c48 w2048 rate (4,337 tok/s).
        Device("h100x8", 2.79e15, 0.0, 8 * 1.79e13, 1.0, 0.85, "8xH100, the records' code: #2135 120.1 ms/step (CHALLENGE.md); eval 8 x pgolf fp32 on H200"),
        # The official baseline (CHALLENGE.md): 43.5 ms/step at 524,288 tokens/step, 9x512, seq 1024: 130.6 MFLOP/token.
        Device("h100x8-baseline", 1.57e15, 0.0, 8 * 1.79e13, 1.0, 0.85, "8xH100, the official baseline script: 43.5 ms/step (CHALLENGE.md)"),
        # pgolf itself, compiled, on one H200 (../shared/gpu-measurements/train-parity-h200.txt):
        # 344.8 ms/step at 524,288 tokens/step, the baseline 9x512; eval as above, one GPU.
        Device("h200x1", 1.99e14, 0.0, 1.79e13, 1.0, 0.85, "1xH200, pgolf compiled: 344.8 ms/step baseline (../shared/gpu-measurements)"),
    )
}
