"""Stage `rd`: the rate-distortion curve of the trained checkpoint (bpb vs bytes, one line per
quantization method of params `rd.methods`), around the settings of params `quantize`.

Writes metrics/plots/rd.json (the points, drawn by `dvc plots show` and by `report`) and
metrics/rd.json (the proxy's weights and each line's range). Sliding-window scores use params
`eval_sliding`; the proxy's weights are quantize.fit_weights unless rd.calibrate.
"""

import argparse

from pgolf.config.rd import RDParams
from pgolf.rd import rd_stage
from pgolf.stage import run_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default="data/train/checkpoint", help="trained checkpoint directory")
parser.add_argument("--calibrate", default="data/calibrate", help="Hessians from the calibrate stage")
parser.add_argument("--shards", default="data/shards", help="validation shards")
parser.add_argument("--tokenizer", default="data/tokenizer/tokenizer.model")
parser.add_argument("--plot", default="metrics/plots/rd.json", help="the curve's points (JSON list)")
parser.add_argument("--metrics", default="metrics/rd.json", help="metrics JSON")
parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
args = parser.parse_args()

run_stage({"rd": RDParams}, lambda rd: rd_stage(rd, args.checkpoint, args.calibrate, args.shards, args.tokenizer, args.plot, args.metrics, args.params),
          args.params)
