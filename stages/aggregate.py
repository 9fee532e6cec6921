"""Stage `aggregate`: val_bpb over the seeds (train.seed, then the others of aggregate.seeds),
tested against a reference.

The main seed's numbers come from metrics/eval_<method>.json; each extra seed reruns train,
calibrate, quantize, pack and every evaluation under data/aggregate/seed-<S>/ with the same
params. Writes metrics/aggregate.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pgolf.aggregate import SeedRun, aggregate
from pgolf.config.aggregate import AggregateParams
from pgolf.config.calibrate import CalibrateParams
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.config.train import TrainParams
from pgolf.eval.methods import METHODS, stage_methods
from pgolf.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default="metrics", help="directory of the main run's metrics files")
    parser.add_argument("--shards", default="data/shards", help="shards the extra seeds train on")
    parser.add_argument("--tokenizer", default="data/tokenizer/tokenizer.model", help="tokenizer model of the byte accounting")
    parser.add_argument("--out", default="data/aggregate", help="where extra seeds write their outputs")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    sections = {"aggregate": AggregateParams, "train": TrainParams, "calibrate": CalibrateParams, "quantize": QuantizeParams,
                "pack": PackParams, **{f"eval_{m}": METHODS[m].params for m in stage_methods()}}

    def body(params, train, calibrate, quantize, pack, *evals):
        run = SeedRun(train, calibrate, quantize, pack, dict(zip(stage_methods(), evals)), Path(args.shards), Path(args.tokenizer), Path(args.params))
        aggregate(params, train.seed, Path(args.metrics), Path(args.out), run)

    run_stage(sections, body, args.params)


if __name__ == "__main__":
    main()
