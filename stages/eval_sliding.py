"""DVC stage `eval_sliding`: val_bpb of the packed artifact with sliding-window scoring.

Loads the model from the artifact (dequantized), never from the checkpoint; the checkpoint is
scored the same way only for `quantization_gap`. Writes metrics/eval_sliding.json.
"""

import argparse
from pathlib import Path

from pgolf.eval.run import eval_sliding_stage
from pgolf.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--artifact", type=Path, default=Path("data/pack"))
parser.add_argument("--shards", type=Path, default=Path("data/shards"))
parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.model"))
parser.add_argument("--checkpoint", type=Path, default=Path("data/train/checkpoint"))
parser.add_argument("--metrics", type=Path, default=Path("metrics/eval_sliding.json"))
parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
args = parser.parse_args()

run_stage("eval_sliding", lambda p: eval_sliding_stage(p, args.artifact, args.shards, args.tokenizer, args.checkpoint, args.metrics), params_path=args.params)
