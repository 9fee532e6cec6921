"""muP learning-rate transfer (issue 15 item 3, PR #4): sweep the Muon learning rate at several
widths, with and without muP (train.model.mup_base_width), on the default corpus shards, CPU, fixed
steps; report each run's final losses, the best learning rate per width, and the coordinate check
(how each layer's RMS scales with the width) of the runs at the default learning rate.

The models differ only in width: 4 layers, head size 32 at every width (the head count grows; muP
keeps attention's 1/sqrt(head_dim)), MLP 2x, tied embeddings, everything else at the defaults. Every
run sees the same batches (seeded windows of the training shards) and is scored on the same
validation windows. One torch thread per run, `--jobs` runs at once, narrowest width first. Each
finished run is appended to `--cache` (JSON lines; a rerun with the same settings skips the runs
found there) and `--out` (markdown, generated: do not edit by hand) is rewritten after every run,
pending runs marked as such.

    nice -n 10 .venv/bin/python bench/mup_transfer.py [--steps 150] [--batch 8] [--jobs 2] [--out docs/mup_transfer.md]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.config.model import ModelParams
from pgolf.config.train import MuonParams, OptimParams
from pgolf.data.shards import list_shards, load_tokens
from pgolf.model.gpt import GPT
from pgolf.optim import activation_rms, build_optimizers, set_schedule, width_exponents
from pgolf.train.schedule import lr_scale, muon_momentum

REPO = Path(__file__).resolve().parents[1]
HEAD_DIM = 32
WARMDOWN = 0.3  # linear warmdown over the last 30% of the steps (the default params' fraction)
CURVE_POINTS = 5  # train-loss points per run in the curves table


@dataclass(frozen=True)
class Run:
    width: int
    lr: float
    mup: bool


@dataclass(frozen=True)
class Setup:
    shards: str
    layers: int
    seq: int
    batch: int
    steps: int
    base: int
    val_seqs: int
    seed: int


def model_config(run: Run, setup: Setup, vocab: int) -> ModelParams:
    heads = run.width // HEAD_DIM
    return ModelParams(
        vocab_size=vocab, layers=setup.layers, width=run.width, heads=heads, kv_heads=max(1, heads // 2),
        mup_base_width=setup.base if run.mup else None,
    )


def windows(tokens: np.ndarray, count: int, seq: int, gen: np.random.Generator) -> torch.Tensor:
    """`count` random windows of seq + 1 tokens, [count, seq + 1] int64."""
    starts = gen.integers(0, len(tokens) - seq - 1, size=count)
    return torch.from_numpy(np.stack([tokens[s : s + seq + 1] for s in starts]).astype(np.int64))


def train_run(run: Run, setup: Setup) -> dict:
    torch.set_num_threads(1)
    train = load_tokens(list_shards(setup.shards, "train"))
    val = load_tokens(list_shards(setup.shards, "val"))
    vocab = json.loads((Path(setup.shards) / "manifest.json").read_text(encoding="utf-8"))["vocab_size"]
    gen = np.random.default_rng(setup.seed)
    val_batch = windows(val, setup.val_seqs, setup.seq, gen)
    torch.manual_seed(setup.seed)
    model = GPT(model_config(run, setup, vocab))
    optim = OptimParams(matrix=MuonParams(lr=run.lr))
    optimizers = build_optimizers(model, optim)
    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(setup.steps):
        batch = windows(train, setup.batch, setup.seq, gen)
        set_schedule(
            optimizers,
            lr_scale(step, step / setup.steps, 0, WARMDOWN, 0.0),
            muon_momentum(step, optim.matrix.momentum_warmup_start, optim.matrix.momentum, optim.matrix.momentum_warmup_steps),
        )
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = model.loss(batch[:, :-1], batch[:, 1:])
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    with torch.no_grad():
        val_loss = model.loss(val_batch[:, :-1], val_batch[:, 1:]).item()
    coords = activation_rms(model, val_batch[:, :-1]) if math.isfinite(val_loss) else {}
    return dict(run=run, losses=losses, val_loss=val_loss if math.isfinite(val_loss) else math.inf, coords=coords, seconds=seconds, cpu=cpu)


def load_cache(path: Path, setup: Setup) -> list[dict]:
    """The cached results of runs with these exact settings."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["setup"] == asdict(setup):
            out.append({**entry["result"], "run": Run(**entry["result"]["run"])})
    return out


def append_cache(path: Path, setup: Setup, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"setup": asdict(setup), "result": {**result, "run": asdict(result["run"])}}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _worker(args: tuple[Run, Setup]) -> dict:
    return train_run(*args)


def fmt_lr(lr: float) -> str:
    return f"{lr:g}"


def best_lrs(results: list[dict], mup: bool, widths: list[int], lrs: list[float]) -> dict[int, float]:
    """Width -> the lr of lowest validation loss, for the widths whose whole lr grid has finished."""
    out = {}
    for width in widths:
        runs = [r for r in results if r["run"].mup == mup and r["run"].width == width]
        if {r["run"].lr for r in runs} >= set(lrs):
            out[width] = min(runs, key=lambda r: r["val_loss"])["run"].lr
    return out


def smoothed_curve(losses: list[float], steps: int) -> list[float]:
    """Mean train loss over each of CURVE_POINTS equal spans of the run."""
    span = max(1, steps // CURVE_POINTS)
    return [float(np.mean(losses[i * span : (i + 1) * span])) if len(losses) >= (i + 1) * span else math.inf for i in range(CURVE_POINTS)]


def loss_cell(r: dict | None) -> str:
    if r is None:
        return "pending"
    return "diverged" if not math.isfinite(r["val_loss"]) else f"{r['val_loss']:.4f}"


def report(results: list[dict], setup: Setup, widths: list[int], lrs: list[float], default_lr: float, command: str, total: int) -> str:
    by = {(r["run"].width, r["run"].lr, r["run"].mup): r for r in results}
    done = "all runs finished" if len(results) >= total else f"PARTIAL: {len(results)} of {total} runs finished, the rest pending"
    lines = [
        "# muP learning-rate transfer (issue 15 item 3)",
        "",
        "Generated by `bench/mup_transfer.py`; do not edit by hand. Command:",
        "",
        f"    {command}",
        "",
        f"{setup.layers} layers, head size {HEAD_DIM} (heads = width/{HEAD_DIM}, kv heads half), seq {setup.seq}, "
        f"{setup.batch} sequences per step, {setup.steps} steps (warmdown over the last {WARMDOWN:.0%}), the default corpus "
        f"shards ({setup.shards}); muP base width {setup.base}; Adam groups at their defaults. Loss: nats per token on the "
        f"same {setup.val_seqs} validation windows for every run. Status: {done}; "
        f"{sum(r['cpu'] for r in results) / 60:.1f} CPU-minutes of training so far (one thread per run).",
        "",
        "## Final validation loss per Muon learning rate",
        "",
        "| Muon lr | " + " | ".join(f"SP {w} | muP {w}" for w in widths) + " |",
        "|---:|" + "---:|" * (2 * len(widths)),
    ]
    best = {mup: best_lrs(results, mup, widths, lrs) for mup in (False, True)}
    for lr in lrs:
        cells = []
        for w in widths:
            for mup in (False, True):
                text = loss_cell(by.get((w, lr, mup)))
                cells.append(f"**{text}**" if best[mup].get(w) == lr else text)
        lines.append(f"| {fmt_lr(lr)} | " + " | ".join(cells) + " |")
    first_w = widths[0]
    lines += ["", "## Best Muon learning rate per width (bold above)", "",
              "| | " + " | ".join(str(w) for w in widths) + f" | same as at {first_w} |", "|---|" + "---:|" * (len(widths) + 1)]
    for mup, name in ((False, "SP (mup_base_width null)"), (True, f"muP (base {setup.base})")):
        at = best[mup]
        cells = [fmt_lr(at[w]) if w in at else "pending" for w in widths]
        verdict = "pending"
        if first_w in at and len(at) > 1:
            shifts = [f"{w}: x{at[w] / at[first_w]:g}" for w in widths[1:] if w in at and at[w] != at[first_w]]
            verdict = ("no (" + ", ".join(shifts) + ")") if shifts else "yes"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    lines += ["", f"Loss paid at each width for using the best lr of width {first_w} instead of that width's own best:", ""]
    for mup, name in ((False, "SP"), (True, "muP")):
        at = best[mup]
        paid = [f"{w}: {by[(w, at[first_w], mup)]['val_loss'] - by[(w, at[w], mup)]['val_loss']:+.4f}" for w in widths[1:] if first_w in at and w in at]
        lines.append(f"- {name}: " + (", ".join(paid) or "pending"))
    lines += ["", "## Train-loss curves at each width's best lr (mean over fifths of the run)", "",
              "| run | lr | " + " | ".join(f"{i + 1}/{CURVE_POINTS}" for i in range(CURVE_POINTS)) + " | CPU s |", "|---|---:|" + "---:|" * (CURVE_POINTS + 1)]
    for mup, name in ((False, "SP"), (True, "muP")):
        for w in widths:
            if w in best[mup]:
                r = by[(w, best[mup][w], mup)]
                curve = " | ".join(f"{x:.3f}" for x in smoothed_curve(r["losses"], setup.steps))
                lines.append(f"| {name} {w} | {fmt_lr(best[mup][w])} | {curve} | {r['cpu']:.0f} |")
    lines += ["", f"## Coordinate check at Muon lr {fmt_lr(default_lr)}: RMS after training, and its width exponent", "",
              "Exponent a of RMS ~ width^a from the narrowest to the widest finished width: 0 = flat (muP's promise).", ""]
    have = {mup: {w: by[(w, default_lr, mup)]["coords"] for w in widths if (w, default_lr, mup) in by and by[(w, default_lr, mup)]["coords"]} for mup in (False, True)}
    if all(len(have[mup]) >= 2 for mup in (False, True)):
        exps = {mup: width_exponents(have[mup]) for mup in (False, True)}
        names = list(next(iter(have[False].values())))
        lines += ["| layer | " + " | ".join(f"SP {w}" for w in widths) + " | SP a | " + " | ".join(f"muP {w}" for w in widths) + " | muP a |",
                  "|---|" + "---:|" * (2 * len(widths) + 2)]
        for layer in names:
            cells = []
            for mup in (False, True):
                cells += [f"{have[mup][w][layer]:.3f}" if w in have[mup] else "pending" for w in widths] + [f"{exps[mup][layer]:+.2f}"]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    else:
        lines.append("pending")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="data/shards")
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.02, 0.04, 0.08, 0.16], help="Muon lrs (log2 grid)")
    ap.add_argument("--default-lr", type=float, default=0.04, help="the lr whose runs give the coordinate check")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--base", type=int, default=128, help="muP base width")
    ap.add_argument("--val-seqs", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", default=".cache/pgolf/mup_transfer.jsonl", help="finished runs (JSON lines), reused by a rerun")
    ap.add_argument("--out", default="docs/mup_transfer.md")
    args = ap.parse_args(argv)
    if args.default_lr not in args.lrs:
        ap.error(f"--default-lr {args.default_lr} must be one of --lrs")
    setup = Setup(args.shards, args.layers, args.seq, args.batch, args.steps, args.base, args.val_seqs, args.seed)
    widths = sorted(args.widths)
    cache = Path(args.cache)
    results = [r for r in load_cache(cache, setup) if r["run"].width in widths and r["run"].lr in args.lrs]
    finished = {r["run"] for r in results}
    runs = [Run(w, lr, mup) for w in widths for lr in args.lrs for mup in (False, True)]
    todo = [run for run in runs if run not in finished]
    command = "nice -n 10 .venv/bin/python bench/mup_transfer.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for r in pool.imap_unordered(_worker, [(run, setup) for run in todo]):
            results.append(r)
            append_cache(cache, setup, r)
            run = r["run"]
            print(f"[{len(results)}/{len(runs)}] width {run.width} lr {run.lr:g} {'muP' if run.mup else 'SP '}: val {r['val_loss']:.4f} ({r['cpu']:.0f} CPU s)", flush=True)
            out.write_text(report(results, setup, widths, args.lrs, args.default_lr, command.strip(), len(runs)), encoding="utf-8")
    text = report(results, setup, widths, args.lrs, args.default_lr, command.strip(), len(runs))
    out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
