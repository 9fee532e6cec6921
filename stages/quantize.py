"""Stage `quantize`: GPTQ (or round-to-nearest) per tensor group, with per-tensor error reports."""

import argparse

from pgolf.quant.stage import quantize_stage
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default="data/train/checkpoint", help="trained checkpoint directory")
parser.add_argument("--calibrate", default="data/calibrate", help="Hessians from the calibrate stage")
parser.add_argument("--out", default="data/quantize", help="output directory (quantized.safetensors, quantized.json)")
parser.add_argument("--metrics", default="metrics/quantize.json", help="metrics JSON")
parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
args = parser.parse_args()

# The pack section: with quantize.target_bytes the fit codes the symbols as pack will, to land under the target.
run_stage({"quantize": QuantizeParams, "pack": PackParams}, lambda q, p: quantize_stage(q, args.checkpoint, args.calibrate, args.out, args.metrics, p), args.params)
