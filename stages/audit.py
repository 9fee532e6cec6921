"""Stage `audit`: exact byte accounting and integrity checks on the validation shards, before training.

Reads params `audit`. Writes metrics/audit.json only when every check passes.
"""

from __future__ import annotations

import argparse

from pgolf.audit import run_audit
from pgolf.config.data import AuditParams
from pgolf.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetched", default="data/fetch", help="fetch output directory")
    parser.add_argument("--tokenizer", default="data/tokenizer", help="tokenizer stage output directory")
    parser.add_argument("--shards", default="data/shards", help="export stage output directory")
    parser.add_argument("--metrics", default="metrics/audit.json", help="metrics file to write")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    run_stage({"audit": AuditParams}, lambda params: run_audit(args.fetched, args.tokenizer, args.shards, params, args.metrics), args.params)


if __name__ == "__main__":
    main()
