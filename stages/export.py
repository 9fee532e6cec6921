"""Stage `export`: tokenize the fetched documents into official-format shards (or link the official ones).

Reads params `export`. Writes data/shards/fineweb_{val,train}_NNNNNN.bin and data/shards/manifest.json.
"""

from __future__ import annotations

import argparse

from pgolf.data.docs import read_fetched
from pgolf.data.export import export_shards
from pgolf.config.data import ExportParams
from pgolf.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetched", default="data/fetch", help="fetch output directory")
    parser.add_argument("--tokenizer", default="data/tokenizer", help="tokenizer stage output directory")
    parser.add_argument("--out", default="data/shards", help="output directory")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    run_stage({"export": ExportParams}, lambda params: export_shards(read_fetched(args.fetched), args.tokenizer, params, args.out), args.params)


if __name__ == "__main__":
    main()
