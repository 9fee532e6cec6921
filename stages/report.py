"""Stage `report`: the training-curve PNG and the val_bpb-per-method plot data.

No params of its own. Reads the DVCLive curves of `train` and metrics/eval_*.json; writes
metrics/plots/train_curve.png and metrics/plots/eval_bpb.json (drawn by `dvc plots show`), and
from stage rd's points (metrics/plots/rd.json) the rate-distortion curve metrics/plots/rd.png.
"""

from __future__ import annotations

import argparse

from pgolf.plots import write_report
from pgolf.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", default="dvclive/train", help="DVCLive directory of the train stage")
    parser.add_argument("--metrics", default="metrics", help="directory of the metrics files")
    parser.add_argument("--out", default="metrics/plots", help="output directory")
    parser.add_argument("--rd", default="metrics/plots/rd.json", help="stage rd's points ('' = no rate-distortion figure)")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    run_stage({}, lambda: write_report(args.live, args.metrics, args.out, args.rd or None), args.params, name="report")


if __name__ == "__main__":
    main()
