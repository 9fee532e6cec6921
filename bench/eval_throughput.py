"""Tokens scored per second by each evaluation method on this device, against a naive reference,
and (on CUDA) the projected seconds for the whole validation set on 8 GPUs.

The naive references are the straightforward implementations of the same scoring: plain and
sliding run one window per forward pass and pick the scored log-probabilities in a Python loop;
TTT runs one document at a time (a single lane). Both sides score the same prefix of the
validation stream in the same precision, and the bench checks that they agree before printing.

Precision and compile are those of the eval sections (pgolf/eval/accel.py): auto = bf16 autocast
and torch.compile on CUDA, fp32 eager on CPU. A compiled method is run twice: the first call's
compilation is reported apart (warm-up), the tokens/s are those of the second, warm pass.

The projection assumes PERFECT data parallelism: each of 8 GPUs scores 1/8 of the official
validation tokens (62,021,632 sp1024; 47,851,520 sp8192) at the one-GPU speed measured here, against
the 600 s evaluation budget. On CPU the figures are printed and the projection is left out (it needs a GPU).

Model: the packed artifact if it exists, else a randomly initialised model of the default
`train.model` shape. Tokens: the first --tokens validation tokens (whole stream: --tokens 0).

    python bench/eval_throughput.py [--artifact data/pack] [--tokens 20000] [--precision auto] [--compile auto]
        [--seq-len 1024] [--window 2048] [--stride 64] [--batch-size 32] [--methods plain,sliding,ttt] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pgolf.config.eval import EvalPlainParams, EvalSlidingParams, EvalTTTParams
from pgolf.eval.accel import compiles, precision_context, resolved_precision
from pgolf.eval.bpb import ValStream, new_nll_array
from pgolf.eval.plain import evaluate_plain, plain_forward, plain_windows
from pgolf.eval.sliding import evaluate_sliding, sliding_forward, sliding_windows
from pgolf.eval.ttt import run_ttt
from pgolf.eval.windows import Window

AGREEMENT_ATOL = {"fp32": 1e-4, "bf16": 0.1}  # nats per token between batched and naive scoring (bf16: other shapes round otherwise)
MEAN_AGREEMENT_ATOL = {"fp32": 1e-6, "bf16": 2e-3}  # nats per token, on the mean
OFFICIAL_VAL_TOKENS = {"sp1024": 62_021_632, "sp8192": 47_851_520}
GPUS = 8
BUDGET_SECONDS = 600.0


@torch.no_grad()
def naive_windows(model: torch.nn.Module, stream: ValStream, windows: list[Window]) -> np.ndarray:
    """One window per forward; each scored log-probability picked in a Python loop."""
    nll = new_nll_array(stream)
    tokens = torch.from_numpy(stream.tokens)
    device = next(model.parameters()).device
    for w in windows:
        logits = model(tokens[w.start : w.stop][None].to(device))[0]
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        for p in range(w.score_from, w.stop + 1):
            nll[p] = -float(logp[p - w.start - 1, int(tokens[p])])
    return nll


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def load_model(artifact: Path, vocab_size: int, device: torch.device) -> tuple[torch.nn.Module, str]:
    if artifact.exists():
        from pgolf.runtime import load_artifact_model

        return load_artifact_model(artifact, device=device), f"artifact {artifact}"
    from pgolf.config.model import ModelParams
    from pgolf.model import GPT

    torch.manual_seed(0)
    return GPT(ModelParams(vocab_size=vocab_size)).to(device).eval(), "random init, default train.model shape"


def projection(tokens_per_s: float) -> str:
    parts = []
    for name, total in OFFICIAL_VAL_TOKENS.items():
        seconds = total / GPUS / tokens_per_s
        parts.append(f"{name} {seconds:8.1f} s {'ok' if seconds <= BUDGET_SECONDS else f'OVER x{seconds / BUDGET_SECONDS:.1f}'}")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("data/pack"))
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.model"))
    parser.add_argument("--tokens", type=int, default=20000, help="validation prefix to score (0 = all)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--seq-len", type=int, default=1024, help="plain: tokens per window")
    parser.add_argument("--window", type=int, default=2048, help="sliding: tokens per window; ttt: most tokens of context")
    parser.add_argument("--stride", type=int, default=64, help="sliding: tokens between window starts")
    parser.add_argument("--batch-size", type=int, default=32, help="plain/sliding: windows per forward pass")
    parser.add_argument("--ttt-chunk", type=int, default=48, help="ttt: targets per chunk")
    parser.add_argument("--ttt-lanes", type=int, default=32, help="ttt: documents side by side")
    parser.add_argument("--methods", default="plain,sliding,ttt", help="comma-separated subset of plain,sliding,ttt")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from pgolf.data.shards import SHARDS_MANIFEST
    from pgolf.io import read_json
    from pgolf.runtime import default_device, load_val_stream

    device = default_device()
    full = load_val_stream(args.shards, args.tokenizer)
    stream = full.prefix(args.tokens) if args.tokens else full
    model, source = load_model(args.artifact, int(read_json(args.shards / SHARDS_MANIFEST)["vocab_size"]), device)
    precision = resolved_precision(args.precision, device)
    compiled = compiles(args.compile, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; model: {source}; tokens scored: {stream.num_tokens - 1}; precision {precision}; "
          f"compile {'on' if compiled else 'off'}")

    speed = {"precision": args.precision, "compile": args.compile}
    plain = EvalPlainParams(seq_len=args.seq_len, batch_size=args.batch_size, **speed)
    sliding = EvalSlidingParams(window=args.window, stride=args.stride, batch_size=args.batch_size, **speed)
    ttt = EvalTTTParams(chunk_tokens=args.ttt_chunk, window=args.window, batch_docs=args.ttt_lanes, **speed)
    single_lane = ttt.model_copy(update={"batch_docs": 1})
    plain_fwd, sliding_fwd = plain_forward(model, plain), sliding_forward(model, sliding)
    cases = {
        "plain": (f"plain {args.seq_len}", lambda: evaluate_plain(model, stream, plain, forward=plain_fwd)[1],
                  lambda: naive_windows(model, stream, plain_windows(stream, plain.seq_len)), plain_fwd),
        "sliding": (f"sliding {args.window}/{args.stride}", lambda: evaluate_sliding(model, stream, sliding, forward=sliding_fwd)[1],
                    lambda: naive_windows(model, stream, sliding_windows(stream, sliding.window, sliding.stride, sliding.doc_bounded)), sliding_fwd),
        "ttt": (f"ttt lora c{args.ttt_chunk} w{args.window}", lambda: run_ttt(model, stream, ttt).nll,
                lambda: run_ttt(model, stream, single_lane).nll, None),
    }
    rows = []
    n = stream.num_tokens - 1
    print(f"{'method':24s} {'tokens/s':>12s} {'naive tok/s':>12s} {'ratio':>7s} {'max|diff|':>10s} {'warm-up s':>9s}")
    with precision_context(args.precision, device):
        for key in args.methods.split(","):
            label, fast, naive, forward = cases[key]
            warmup = 0.0
            if forward is not None and forward.compiled:
                _, first = timed(fast)
                warmup = forward.warmup_seconds
            fast_nll, fast_s = timed(fast)
            naive_nll, naive_s = timed(naive)
            diff = np.abs(fast_nll - naive_nll)
            max_diff, mean_diff = float(np.nanmax(diff)), abs(float(np.nanmean(fast_nll - naive_nll)))
            if max_diff > AGREEMENT_ATOL[precision] or mean_diff > MEAN_AGREEMENT_ATOL[precision]:
                raise SystemExit(f"{key}: batched and naive scoring disagree by {max_diff:.3g} nats (mean {mean_diff:.3g})")
            row = {"method": label, "tokens_per_s": n / fast_s, "naive_tokens_per_s": n / naive_s, "speedup": naive_s / fast_s,
                   "max_abs_diff_nats": max_diff, "compile_warmup_s": warmup, "precision": precision, "compiled": compiled}
            if device.type == "cuda":
                row["projected_8gpu_seconds"] = {k: t / GPUS / row["tokens_per_s"] for k, t in OFFICIAL_VAL_TOKENS.items()}
            rows.append(row)
            print(f"{label:24s} {n / fast_s:12.0f} {n / naive_s:12.0f} {naive_s / fast_s:6.2f}x {max_diff:10.2e} {warmup:9.2f}")
    print()
    if device.type == "cuda":
        print(f"full validation set on {GPUS} GPUs, seconds per GPU (PERFECT data parallelism assumed), budget {BUDGET_SECONDS:.0f} s:")
        for row in rows:
            print(f"  {row['method']:24s} {projection(row['tokens_per_s'])}")
    else:
        print("projection for the full validation set on 8 GPUs: needs a GPU (these are CPU figures)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
