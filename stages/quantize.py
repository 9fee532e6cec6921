"""Stage `quantize`: GPTQ (or round-to-nearest) per tensor group, with per-tensor error reports."""

import argparse

from pgolf.quant.stage import quantize_stage
from pgolf.config.quantize import QuantizeParams
from pgolf.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default="data/train/checkpoint", help="trained checkpoint directory")
parser.add_argument("--calibrate", default="data/calibrate", help="Hessians from the calibrate stage")
parser.add_argument("--out", default="data/quantize", help="output directory (quantized.safetensors, quantized.json)")
parser.add_argument("--metrics", default="metrics/quantize.json", help="metrics JSON")
parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
args = parser.parse_args()

run_stage({"quantize": QuantizeParams}, lambda p: quantize_stage(p, args.checkpoint, args.calibrate, args.out, args.metrics), args.params)
