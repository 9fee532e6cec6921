"""Stage `aggregate`: val_bpb over `aggregate.seeds` (the main run plus reruns), tested against a reference.

Reads params `aggregate` and `train.seed`; the main seed's numbers come from metrics/eval_*.json,
each extra seed reruns train..eval_ttt under data/aggregate/seed-<S>/. Writes metrics/aggregate.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pgolf.aggregate import aggregate
from pgolf.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default="metrics", help="directory of the main run's metrics files")
    parser.add_argument("--out", default="data/aggregate", help="where extra seeds write their outputs")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    run_stage(
        "aggregate",
        lambda params, train: aggregate(params, train.seed, Path.cwd(), Path(args.metrics), Path(args.out)),
        also=("train",),
        params_path=args.params,
    )


if __name__ == "__main__":
    main()
