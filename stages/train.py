"""DVC stage `train`: train the GPT on data/shards per the `train` params.

Writes data/train/checkpoint/ (model.safetensors, checkpoint.json, train_state.safetensors),
metrics/train.json and the DVCLive curves in dvclive/train. With train.nproc > 1 the script
launches torchrun as a supervised child (each worker runs this script) and waits for it. With
calibrate.on_train_ranks the ranks also collect the GPTQ Hessians right after the loop, into the
checkpoint (hessians.safetensors, hessians.json), inside the training budget.
"""

import argparse
import sys
from pathlib import Path

from pgolf.config.calibrate import CalibrateParams
from pgolf.config.train import TrainParams
from pgolf.stage import run_stage
from pgolf.train.stage import run_train_stage

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--shards", type=Path, default=Path("data/shards"))
parser.add_argument("--out", type=Path, default=Path("data/train"))
parser.add_argument("--metrics", type=Path, default=Path("metrics/train.json"))
parser.add_argument("--live", type=lambda text: Path(text) if text else None, default=Path("dvclive/train"), help="DVCLive curves directory; an empty value: no curves")
parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
args = parser.parse_args()

run_stage(
    {"train": TrainParams, "calibrate": CalibrateParams},
    lambda p, c: run_train_stage(p, args.shards, args.out, args.metrics, args.live, argv=sys.argv, calibration=c),
    args.params,
)
