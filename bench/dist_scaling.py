"""Step time per token of 1, 2 and 4 gloo processes on CPU for the same global batch (the default
CPU model, 4 x 128, vocab 1024; 4 micro-batches per step split over the ranks), each process
with one torch thread. Each process runs pgolf's Trainer; rank 0 times its steps from one step's
start to the next (Muon's sharded all-reduce, the gradient buckets and the loop's sync included).

Issue 14's goal: 4 processes within 1.3x of one process's step time per token. On a machine with
fewer cores than processes they share the cores: the report says how many cores there are.
Last line: the ratio 4-process / 1-process step time per token.

    python bench/dist_scaling.py [--steps 12] [--worlds 1 2 4] [--batch-tokens 16384]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from pgolf.config.train import TrainParams
from pgolf.data.shards import write_shard
from pgolf.dist import join_group, shutdown
from pgolf.train.loop import Trainer

VOCAB = 1024
MICRO_BATCHES = 4
WARMUP_STEPS = 2


def bench_params(world: int, steps: int, batch_tokens: int, out: Path) -> TrainParams:
    return TrainParams.model_validate({
        "iterations": steps, "batch_tokens": batch_tokens, "grad_accum_steps": MICRO_BATCHES, "nproc": world,
        "val_every": 0, "checkpoint_every": 0, "resume": False, "resume_dir": str(out / "resume"), "device": "cpu",
        "final_val_ceiling": 0.0, "log_every": 10**6, "val_tokens": 1024, "val_batch_tokens": 1024,
    })


def _worker(rank: int, world: int, init_file: str, shards: str, out: str, steps: int, batch_tokens: int) -> None:
    torch.set_num_threads(1)
    info = join_group(rank, world, rank, "cpu", f"file://{init_file}")
    try:
        trainer = Trainer(bench_params(world, steps, batch_tokens, Path(out)), Path(shards), Path(out) / "run", info, None)
        starts: list[float] = []
        step = trainer.train_step

        def timed(seq_len: int | None = None) -> torch.Tensor:
            starts.append(time.perf_counter())
            return step(seq_len)

        def end_of_steps() -> float:  # the final validation is not what this bench measures
            starts.append(time.perf_counter())
            return 0.0

        trainer.train_step, trainer.validate = timed, end_of_steps
        trainer.run()
        if info.is_main:
            intervals = [b - a for a, b in zip(starts, starts[1:], strict=False)][WARMUP_STEPS:]
            Path(out, "steps.json").write_text(json.dumps(intervals))
    finally:
        shutdown(info)


def measure(world: int, shards: Path, work: Path, steps: int, batch_tokens: int) -> float:
    """Median seconds per step of rank 0 after the warm-up steps."""
    out = work / f"world{world}"
    out.mkdir()
    mp.spawn(_worker, args=(world, str(out / "init"), str(shards), str(out), steps, batch_tokens), nprocs=world, join=True)
    return statistics.median(json.loads((out / "steps.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-tokens", type=int, default=16384, help="global tokens per step (4 micro-batches)")
    args = parser.parse_args(argv)
    if 1 not in args.worlds or any(MICRO_BATCHES % w for w in args.worlds):
        parser.error(f"--worlds must include 1 and divide {MICRO_BATCHES}")
    tokens = np.random.default_rng(0).integers(0, VOCAB, 400_000).astype(np.uint16)
    with tempfile.TemporaryDirectory(prefix="dist-scaling-") as tmp:
        shards = Path(tmp) / "shards"
        shards.mkdir()
        write_shard(shards / "fineweb_train_000000.bin", tokens)
        write_shard(shards / "fineweb_val_000000.bin", tokens[:10_000])
        (shards / "manifest.json").write_text(f'{{"vocab_size": {VOCAB}, "bos_id": 1}}')
        seconds = {w: measure(w, shards, Path(tmp), args.steps, args.batch_tokens) for w in args.worlds}
    cores = len(os.sched_getaffinity(0))
    print(f"cores: {cores}; 1 torch thread per process; {args.batch_tokens:,} tokens/step in {MICRO_BATCHES} micro-batches; "
          f"median of steps {WARMUP_STEPS + 1}..{args.steps}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'processes':>9} {'ms/step':>9} {'us/token':>9} {'vs 1':>6} {'ideal':>6}")
    for world, s in seconds.items():
        ideal = 1 / min(world, cores)  # the cores this many processes can use
        print(f"{world:>9} {1000 * s:>9.1f} {1e6 * s / args.batch_tokens:>9.2f} {s / seconds[1]:>6.3f} {ideal:>6.3f}")
    last = max(args.worlds)
    print(f"{last}-process / 1-process step time per token: {seconds[last] / seconds[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
