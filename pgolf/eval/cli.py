"""`pgolf eval ARTIFACT --method NAME [--set key=value ...] [--json]`: eval-only, outside DVC.

NAME is a method of `pgolf.eval.methods.METHODS` (plain, sliding, ttt). `--set` keys are the
method's params (plain: EvalPlainParams; sliding: the eval_sliding section; ttt: the eval_ttt
section), validated by the same models; unset keys take their defaults. With
--json the last stdout line is one JSON object (val_bpb, val_loss, scored_tokens, scored_bytes,
seconds, method, params; ttt adds val_bpb_no_ttt and the legality report).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from pgolf.config.base import validate_section
from pgolf.errors import ParamsError


def parse_sets(pairs: list[str], method: str) -> Any:
    """`key=value` strings (values read as YAML scalars) -> the method's validated params."""
    from pgolf.eval.methods import METHODS

    data: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {pair!r}: expected key=value")
        try:
            data[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ParamsError(f"--set {pair!r}: value is not a YAML scalar") from None
    return validate_section(METHODS[method].params, data, method)


def _eval(args: argparse.Namespace) -> int:
    from pgolf.runtime import evaluate_artifact, load_artifact_model, load_val_stream
    from pgolf.stage import setup_logging

    params = parse_sets(args.set or [], args.method)
    setup_logging()
    stream = load_val_stream(args.shards, args.tokenizer)
    model = load_artifact_model(args.artifact, args.tokenizer)
    outcome = evaluate_artifact(args.method, model, stream, params)
    out: dict[str, Any] = {"method": args.method, **outcome.result.to_dict(), **outcome.extra}
    out["params"] = params.model_dump(mode="json")
    if args.json:
        print(json.dumps(out))
    else:
        for key in ("val_bpb", "val_loss", "scored_tokens", "scored_bytes", "seconds", "val_bpb_no_ttt"):
            if key in out:
                print(f"{key}: {out[key]}")
    return 0


def add_eval_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate a packed artifact (plain, sliding window, or score-first TTT)")
    parser.add_argument("artifact", help="the artifact file, or the pack directory holding model.pgolf")
    from pgolf.eval.methods import METHODS

    parser.add_argument("--method", choices=tuple(METHODS), required=True, help="evaluation method: " + "; ".join(f"{k}: {m.description}" for k, m in METHODS.items()))
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="a param of the method (repeatable); plain takes seq_len, batch_size")
    parser.add_argument("--shards", default="data/shards", help="directory of the validation shards and manifest.json (default: data/shards)")
    parser.add_argument("--tokenizer", default="data/tokenizer/tokenizer.model", help="SentencePiece model for the byte accounting")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.set_defaults(func=_eval)
