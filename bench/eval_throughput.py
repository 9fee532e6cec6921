"""Tokens scored per second by each evaluation method against a naive reference, in one run.

The naive references are the straightforward implementations of the same scoring: plain and
sliding run one window per forward pass and pick the scored log-probabilities in a Python loop;
TTT runs one document at a time (a single lane). Both sides score the same prefix of the
validation stream, and the bench checks that they agree before printing the ratios.

Model: the packed artifact if it exists, else a randomly initialised model of the default
`train.model` shape. Tokens: the first --tokens validation tokens (whole stream: --tokens 0).

    python bench/eval_throughput.py [--artifact data/pack] [--tokens 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pgolf.config.eval import EvalPlainParams, EvalSlidingParams, EvalTTTParams
from pgolf.eval.bpb import ValStream, new_nll_array
from pgolf.eval.plain import evaluate_plain, plain_windows
from pgolf.eval.sliding import evaluate_sliding, sliding_windows
from pgolf.eval.ttt import run_ttt
from pgolf.eval.windows import Window

AGREEMENT_ATOL = 1e-4  # nats per token between batched and naive scoring


@torch.no_grad()
def naive_windows(model: torch.nn.Module, stream: ValStream, windows: list[Window]) -> np.ndarray:
    """One window per forward; each scored log-probability picked in a Python loop."""
    nll = new_nll_array(stream)
    tokens = torch.from_numpy(stream.tokens)
    for w in windows:
        logp = torch.log_softmax(model(tokens[w.start : w.stop][None])[0].float(), dim=-1)
        for p in range(w.score_from, w.stop + 1):
            nll[p] = -float(logp[p - w.start - 1, int(tokens[p])])
    return nll


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def load_model(artifact: Path, vocab_size: int) -> tuple[torch.nn.Module, str]:
    if artifact.exists():
        from pgolf.runtime import load_artifact_model

        return load_artifact_model(artifact, device=torch.device("cpu")), f"artifact {artifact}"
    from pgolf.config.model import ModelParams
    from pgolf.model import GPT

    torch.manual_seed(0)
    return GPT(ModelParams(vocab_size=vocab_size)).eval(), "random init, default train.model shape"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("data/pack"))
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.model"))
    parser.add_argument("--tokens", type=int, default=20000, help="validation prefix to score (0 = all)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from pgolf.runtime import load_val_stream

    full = load_val_stream(args.shards, args.tokenizer)
    stream = full.prefix(args.tokens) if args.tokens else full
    from pgolf.data.shards import SHARDS_MANIFEST
    from pgolf.io import read_json

    model, source = load_model(args.artifact, int(read_json(args.shards / SHARDS_MANIFEST)["vocab_size"]))
    print(f"model: {source}; tokens scored: {stream.num_tokens - 1}; threads: {torch.get_num_threads()}")

    plain, sliding, ttt = EvalPlainParams(), EvalSlidingParams(), EvalTTTParams()
    single_lane = EvalTTTParams(**{**ttt.model_dump(), "batch_docs": 1})
    cases = [
        ("plain", lambda: evaluate_plain(model, stream, plain)[1], lambda: naive_windows(model, stream, plain_windows(stream, plain.seq_len))),
        ("sliding", lambda: evaluate_sliding(model, stream, sliding)[1],
         lambda: naive_windows(model, stream, sliding_windows(stream, sliding.window, sliding.stride, sliding.doc_bounded))),
        ("ttt", lambda: run_ttt(model, stream, ttt).nll, lambda: run_ttt(model, stream, single_lane).nll),
    ]
    rows = []
    for name, fast, naive in cases:
        fast_nll, fast_s = timed(fast)
        naive_nll, naive_s = timed(naive)
        max_diff = float(np.nanmax(np.abs(fast_nll - naive_nll)))
        if max_diff > AGREEMENT_ATOL:
            raise SystemExit(f"{name}: batched and naive scoring disagree by {max_diff:.3g} nats")
        n = stream.num_tokens - 1
        rows.append({"method": name, "tokens_per_s": n / fast_s, "naive_tokens_per_s": n / naive_s, "speedup": naive_s / fast_s, "max_abs_diff_nats": max_diff})
        print(f"{name:8s} {n / fast_s:10.0f} tok/s   naive {n / naive_s:10.0f} tok/s   ratio {naive_s / fast_s:6.2f}x   max |diff| {max_diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
