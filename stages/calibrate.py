"""Stage `calibrate`: GPTQ Hessians of the trained model on TRAINING shards only.

Only the shard files named by --shards are read (fineweb_train_*.bin; any other name is refused),
so validation data is neither read nor a DVC dependency of this stage.
"""

import argparse

from pgolf.quant.calibrate import calibrate_stage
from pgolf.config.calibrate import CalibrateParams
from pgolf.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default="data/train/checkpoint", help="trained checkpoint directory")
parser.add_argument("--shards", nargs="+", default=["data/shards/fineweb_train_000000.bin"], help="training shard files")
parser.add_argument("--out", default="data/calibrate", help="output directory (hessians.safetensors, hessians.json)")
parser.add_argument("--metrics", default="metrics/calibrate.json", help="metrics JSON")
parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
args = parser.parse_args()

run_stage({"calibrate": CalibrateParams}, lambda p: calibrate_stage(p, args.checkpoint, args.shards, args.out, args.metrics), args.params)
