"""pgolf's baseline training against the official train_gpt.py on this machine, one process each,
the same shards, model and batch (profiles/baseline-8xh100.yaml's train section, nproc 1). Last
line: the ratio pgolf/official of the median ms/step.

It makes its own data offline: a SentencePiece tokenizer trained on the builtin `pydoc_topics`
corpus (shipped with CPython) and shards in the official format (BOS before each document), the
token stream tiled to the length the steps need. The official script is never bundled: pass its
path with --official; it is configured by environment variables, set here for its process only.
Both log every step (one host sync per step each: pgolf's loss guard, the official's loss print).

    python bench/gpu_parity.py --steps 60 --official /path/to/train_gpt.py     # on a GPU
    python bench/gpu_parity.py --device cpu --steps 3 --tiny                    # a dry run

Reported per side: ms/step (median over steps 11..N, or every step after the first when N <= 11),
MFU = tokens/s x (6 N + 12 L d T) / peak FLOP/s (N parameters, L layers, width d, sequence T;
the head's 6 V d is inside 6 N when tied), peak memory allocated, and the training loss at step N.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from pgolf.config.data import TokenizerParams
from pgolf.config.train import TrainParams
from pgolf.data.builtin import read_pydoc_topics
from pgolf.data.shards import write_shard
from pgolf.dist import init_dist
from pgolf.model import count_params
from pgolf.profiles import load_profile, merge
from pgolf.tokenizer import train_tokenizer
from pgolf.train.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
PROFILE = "baseline-8xh100"
BOS_ID = 1
SKIP_STEPS = 10  # compile and warm-up: steps 11..N are measured
TINY = {"model": {"layers": 2, "width": 64, "heads": 2, "kv_heads": 1}, "batch_tokens": 2048, "seq_len": 128, "grad_accum_steps": 2}
STEP_LINE = re.compile(r"^step:(\d+)/\d+ train_loss:([0-9.naninf]+) train_time:(\d+)ms")
PEAK_LINE = re.compile(r"^peak memory allocated: (\d+) MiB")


@dataclass
class Side:
    name: str
    step_ms: dict[int, float] = field(default_factory=dict)  # step -> its milliseconds
    losses: dict[int, float] = field(default_factory=dict)
    peak_mib: float = float("nan")
    note: str = ""

    def median_ms(self) -> float:
        first = SKIP_STEPS + 1 if len(self.step_ms) > SKIP_STEPS + 1 else 2
        measured = [ms for step, ms in self.step_ms.items() if step >= first]
        return statistics.median(measured) if measured else float("nan")


def bench_params(device: str, steps: int, tiny: bool) -> TrainParams:
    """The profile's train section as one process running `steps` steps, nothing else in the loop."""
    train = load_profile(PROFILE, REPO / "profiles").overrides["train"]
    train = merge(train, {"nproc": 1, "iterations": steps, "max_wallclock_seconds": 0.0, "val_every": 0, "checkpoint_every": 0,
                          "resume": False, "device": device, "log_every": 1, "compile": device == "cuda"})
    if tiny:
        train = merge(train, TINY)
    train["val_tokens"] = train["val_batch_tokens"] = train["seq_len"] * 8
    return TrainParams.model_validate(train)


def flops_per_token(params_count: int, p: TrainParams) -> float:
    """6N + 12 L d T: the weights' forward and backward plus attention's scores and values."""
    return 6 * params_count + 12 * p.model.layers * p.model.width * p.seq_len


# -- data ------------------------------------------------------------------------------------------
def make_data(out: Path, vocab_size: int, train_tokens: int, val_tokens: int) -> tuple[Path, Path]:
    """out/tokenizer.model and out/shards/ (official names and format, plus pgolf's manifest.json)."""
    docs = [text.text for text in read_pydoc_topics(None).texts]
    model = train_tokenizer(docs, TokenizerParams(vocab_size=vocab_size), out / "tokenizer")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    stream = np.concatenate([np.array([BOS_ID, *ids], dtype=np.uint16) for ids in sp.encode(docs)])
    shards = out / "shards"
    shards.mkdir(parents=True)
    val_docs = len(docs) // 10  # the first tenth is validation; training tiles the rest
    val = np.concatenate([np.array([BOS_ID, *ids], dtype=np.uint16) for ids in sp.encode(docs[:val_docs])])
    train = stream[len(val):]
    write_shard(shards / "fineweb_val_000000.bin", np.resize(val, max(val_tokens, len(val))))
    write_shard(shards / "fineweb_train_000000.bin", np.resize(train, max(train_tokens, len(train))))
    (shards / "manifest.json").write_text(f'{{"vocab_size": {vocab_size}, "bos_id": {BOS_ID}}}')
    return model, shards


# -- the two runs ----------------------------------------------------------------------------------
def run_pgolf(p: TrainParams, shards: Path, work: Path) -> tuple[Side, int]:
    """pgolf's Trainer in this process; a step's time is from its start to the next one's (the loop's
    guard, sync and bookkeeping included), the last one's to the final validation."""
    info = init_dist(p.device)
    cuda = info.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(info.device)
    trainer = Trainer(p, shards, work / "pgolf-out", info, None)
    side, starts = Side("pgolf"), []
    step, validate = trainer.train_step, trainer.validate

    def timed_step(seq_len: int | None = None) -> torch.Tensor:
        starts.append(time.perf_counter())
        loss = step(seq_len)
        side.losses[len(starts)] = loss  # a tensor until the run ends: no extra sync
        return loss

    def timed_validate() -> float:  # val_every 0: only the final validation, right after step N
        starts.append(time.perf_counter())
        return validate()

    trainer.train_step, trainer.validate = timed_step, timed_validate
    trainer.run()
    side.step_ms = {i + 1: 1000 * (b - a) for i, (a, b) in enumerate(zip(starts, starts[1:], strict=False))}
    side.losses = {k: float(v) for k, v in side.losses.items()}
    side.peak_mib = torch.cuda.max_memory_allocated(info.device) / 2**20 if cuda else float("nan")
    return side, count_params(trainer.model)


def official_env(p: TrainParams, shards: Path, tokenizer: Path) -> dict[str, str]:
    """The official script's configuration for the same model and batch (its process only)."""
    m, o = p.model, p.optim
    env = {
        "DATA_PATH": str(shards), "TOKENIZER_PATH": str(tokenizer), "RUN_ID": "gpu_parity", "SEED": str(p.seed),
        "ITERATIONS": str(p.iterations), "WARMDOWN_ITERS": str(max(1, round(p.warmdown_fraction * p.iterations))), "WARMUP_STEPS": "0", "MAX_WALLCLOCK_SECONDS": "0", "VAL_LOSS_EVERY": "0",
        "TRAIN_LOG_EVERY": "1", "TRAIN_BATCH_TOKENS": str(p.batch_tokens), "TRAIN_SEQ_LEN": str(p.seq_len),
        "VAL_BATCH_SIZE": str(p.val_batch_tokens), "VOCAB_SIZE": str(m.vocab_size), "NUM_LAYERS": str(m.layers),
        "MODEL_DIM": str(m.width), "NUM_HEADS": str(m.heads), "NUM_KV_HEADS": str(m.kv_heads), "MLP_MULT": str(int(m.mlp_mult)),
        "MATRIX_LR": str(o.matrix.lr), "SCALAR_LR": str(o.scalar.lr), "TIED_EMBED_LR": str(o.embed.lr),
    }
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**base, **env}


def parse_official(text: str) -> Side:
    side, times = Side("official"), {}
    for line in text.splitlines():
        if found := STEP_LINE.match(line.strip()):
            step = int(found[1])
            side.losses[step], times[step] = float(found[2]), float(found[3])
        elif found := PEAK_LINE.match(line.strip()):
            side.peak_mib = float(found[1])
    side.step_ms = {s: times[s] - times[s - 1] for s in sorted(times) if s - 1 in times}
    return side


def run_official(script: Path, p: TrainParams, shards: Path, tokenizer: Path, work: Path, timeout: float) -> Side:
    """`python script` with the gradient accumulation of 8 // WORLD_SIZE (one process: 8 micro-batches)."""
    run_dir = work / "official"
    run_dir.mkdir()
    done = subprocess.run([sys.executable, str(script)], cwd=run_dir, env=official_env(p, shards, tokenizer),
                          capture_output=True, text=True, timeout=timeout, check=False)
    side = parse_official(done.stdout)
    if done.returncode != 0 or not side.step_ms:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        side.note = f"exit {done.returncode}: " + " | ".join(tail)
    return side


# -- report ----------------------------------------------------------------------------------------
def report(sides: list[Side], p: TrainParams, params_count: int, peak_tflops: float, steps: int) -> list[str]:
    per_token = flops_per_token(params_count, p)
    lines = [f"model: {p.model.layers} x {p.model.width}, heads {p.model.heads}/{p.model.kv_heads}, vocab {p.model.vocab_size}, "
             f"seq {p.seq_len}; {p.batch_tokens:,} tokens/step in {p.grad_accum_steps} micro-batches; {params_count:,} params",
             f"FLOPs/token 6N + 12LdT = {per_token:,.0f}; MFU against {peak_tflops:g} TFLOP/s",
             f"{'':<28}" + "".join(f"{s.name:>14}" for s in sides)]
    rows = {
        "median ms/step (11..N)": [f"{s.median_ms():.2f}" for s in sides],
        "tokens/s": [f"{p.batch_tokens / s.median_ms() * 1000:,.0f}" for s in sides],
        "MFU": [f"{p.batch_tokens / s.median_ms() * 1000 * per_token / (peak_tflops * 1e12):.1%}" for s in sides],
        "peak memory allocated MiB": [f"{s.peak_mib:,.0f}" for s in sides],
        f"train loss at step {steps}": [f"{s.losses.get(steps, float('nan')):.4f}" for s in sides],
    }
    lines += [f"{name:<28}" + "".join(f"{v:>14}" for v in values) for name, values in rows.items()]
    lines += [f"{s.name}: {s.note}" for s in sides if s.note]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--official", type=Path, help="path of the official train_gpt.py (not bundled); without it only pgolf runs")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    parser.add_argument("--tiny", action="store_true", help="a 2 x 64 model and 2,048-token steps: a dry run of the bench itself")
    parser.add_argument("--official-timeout", type=float, default=900.0, help="seconds before the official run is stopped")
    parser.add_argument("--work", type=Path, help="keep the data and outputs here (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official is not None and not args.official.is_file():
        parser.error(f"--official: {args.official} is not a file")
    p = bench_params(args.device, args.steps, args.tiny)
    with tempfile.TemporaryDirectory(prefix="gpu-parity-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        tokenizer, shards = make_data(work / "data", p.model.vocab_size, p.batch_tokens * (p.iterations + 2), 16 * p.seq_len + 1)
        print(f"data: {shards} in {time.perf_counter() - started:.1f}s; torch {torch.__version__} on {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""), file=sys.stderr)
        pgolf, params_count = run_pgolf(p, shards, work)
        sides = [pgolf]
        if args.official is not None:
            sides.append(run_official(args.official, p, shards, tokenizer, work, args.official_timeout))
        for line in report(sides, p, params_count, args.peak_tflops, args.steps):
            print(line)
    if len(sides) == 2:
        ratio = pgolf.median_ms() / sides[1].median_ms()
        print(f"pgolf/official ms/step: {ratio:.3f}")
    else:
        print(f"pgolf ms/step: {pgolf.median_ms():.2f} (no --official: no ratio)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
