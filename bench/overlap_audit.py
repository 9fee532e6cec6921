"""Throughput of the train/val overlap audit (pgolf/overlap.py) on official-size shards.

Writes `--shards` synthetic training shards of `--shard-tokens` tokens (official: 10^8 per shard,
80 shards) with documents of the official mean length (62,021,846 validation tokens / 50,000
documents ~ 1,240 tokens), and 50,000 validation documents, then times `check_overlap` with 1 and
`--workers` processes. Prints tokens/s and the projection to the official 80 shards (8 x 10^9
tokens). The shards are random tokens: hashing cost depends on lengths, not on content.

    python bench/overlap_audit.py [--shards 4] [--shard-tokens 100000000] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pgolf.data.shards import shard_name, write_shard
from pgolf.overlap import check_overlap

BOS = 1
MEAN_DOC_TOKENS = 1240
MIN_DOC_TOKENS = 32  # random documents of a few tokens would collide by chance; web pages do not


def synthetic_stream(rng: np.random.Generator, tokens: int) -> np.ndarray:
    stream = rng.integers(2, 1024, size=tokens, dtype=np.uint16)
    gaps = MIN_DOC_TOKENS + rng.geometric(1.0 / (MEAN_DOC_TOKENS - MIN_DOC_TOKENS), size=tokens // MEAN_DOC_TOKENS * 2)
    starts = np.cumsum(gaps)
    stream[starts[starts < tokens]] = BOS
    stream[0] = BOS
    return stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-tokens", type=int, default=10**8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--val-docs", type=int, default=50_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_shard(Path(tmp) / shard_name("train", i), synthetic_stream(rng, args.shard_tokens)) for i in range(args.shards)]
        val_stream = synthetic_stream(rng, args.val_docs * MEAN_DOC_TOKENS)
        bos = np.flatnonzero(val_stream == BOS)
        val_docs = np.split(val_stream, bos[1:])
        total = args.shards * args.shard_tokens
        print(f"{args.shards} shards x {args.shard_tokens:,} tokens, {len(val_docs):,} validation documents")
        for workers in sorted({1, args.workers}):
            start = time.perf_counter()
            result = check_overlap(val_docs, paths, BOS, workers=workers)
            seconds = time.perf_counter() - start
            rate = total / seconds
            print(
                f"workers {workers}: {seconds:.1f} s, {rate / 1e6:.1f} M tokens/s, {result.train_docs_checked:,} training documents; "
                f"official 80 shards (8e9 tokens) projected {8e9 / rate:.0f} s"
            )


if __name__ == "__main__":
    main()
