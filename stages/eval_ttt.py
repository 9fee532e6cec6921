"""DVC stage `eval_ttt`: val_bpb of the packed artifact with score-first test-time training.

Runs the legality check (C1-C4) first on the first `legality_tokens` tokens and fails the stage
if any condition breaks. Reports val_bpb (adapted), val_bpb_no_ttt (the same chunked scoring
without updates), the legality results and quantization_gap (artifact - checkpoint, measured on
the frozen chunked scoring). Writes metrics/eval_ttt.json.
"""

import argparse
from pathlib import Path

from pgolf.eval.run import eval_ttt_stage
from pgolf.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--artifact", type=Path, default=Path("data/pack"))
parser.add_argument("--shards", type=Path, default=Path("data/shards"))
parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.model"))
parser.add_argument("--checkpoint", type=Path, default=Path("data/train/checkpoint"))
parser.add_argument("--metrics", type=Path, default=Path("metrics/eval_ttt.json"))
parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
args = parser.parse_args()

run_stage("eval_ttt", lambda p: eval_ttt_stage(p, args.artifact, args.shards, args.tokenizer, args.checkpoint, args.metrics), params_path=args.params)
