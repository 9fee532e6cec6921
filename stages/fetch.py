"""Stage `fetch`: documents from the pinned offline corpora, or the official shards from the hub.

Reads params `fetch`. Writes data/fetch/manifest.json plus docs.jsonl (source=builtin) or the
official layout under data/fetch/hub/ (source=hf); the directory is replaced atomically.
"""

from __future__ import annotations

import argparse

from pgolf.data.fetch import fetch
from pgolf.config.data import FetchParams
from pgolf.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/fetch", help="output directory")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    run_stage({"fetch": FetchParams}, lambda params: fetch(params, args.out), args.params)


if __name__ == "__main__":
    main()
