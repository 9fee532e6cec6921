"""DVC stages `eval_<method>` (dvc.yaml's `eval` foreach): val_bpb of the packed artifact by one
evaluation method of `pgolf.eval.methods.METHODS`, its params the section `eval_<method>`.

Loads the model from the artifact (dequantized), never from the checkpoint; the checkpoint is
scored the same way only for `quantization_gap`. Writes metrics/eval_<method>.json. With
eval_<method>.nproc > 1 the script launches torchrun as a supervised child (each worker runs this
script and scores a share; rank 0 writes) and waits for it, as the train stage does.
"""

import argparse
import sys
from pathlib import Path

from pgolf.eval.methods import METHODS, stage_methods
from pgolf.eval.run import run_eval_stage
from pgolf.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--method", required=True, choices=stage_methods(), help="evaluation method")
parser.add_argument("--artifact", type=Path, default=Path("data/pack"))
parser.add_argument("--shards", type=Path, default=Path("data/shards"))
parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.model"))
parser.add_argument("--checkpoint", type=Path, default=Path("data/train/checkpoint"))
parser.add_argument("--metrics", type=Path, help="metrics JSON (default: metrics/eval_<method>.json)")
parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
args = parser.parse_args()

section = f"eval_{args.method}"
metrics = args.metrics or Path(f"metrics/{section}.json")
run_stage({section: METHODS[args.method].params},
          lambda p: run_eval_stage(args.method, p, args.artifact, args.shards, args.tokenizer, args.checkpoint, metrics, sys.argv),
          args.params)
