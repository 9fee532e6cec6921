"""Stage `pack`: the artifact (data/pack/model.pgolf), byte accounting, and the byte-limit gate.

Fails (exit 1, naming the overage, no artifact left) when bytes_model + bytes_code exceeds
pack.limit_bytes.
"""

import argparse

from pgolf.config.pack import PackParams
from pgolf.pack.pack import pack_stage
from pgolf.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quantized", default="data/quantize", help="output of the quantize stage")
parser.add_argument("--tokenizer", default="data/tokenizer/tokenizer.model", help="the tokenizer the model was trained for (its sha256 goes into the artifact)")
parser.add_argument("--out", default="data/pack", help="artifact directory")
parser.add_argument("--metrics", default="metrics/pack.json", help="metrics JSON")
parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
args = parser.parse_args()

run_stage({"pack": PackParams}, lambda p: pack_stage(p, args.quantized, args.out, args.metrics, tokenizer=args.tokenizer), args.params)
