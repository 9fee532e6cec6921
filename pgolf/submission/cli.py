"""`pgolf submission export`: the record folder of a finished run (pgolf.submission.export)."""

from __future__ import annotations

import argparse


def _export(args: argparse.Namespace) -> int:
    from pgolf.submission.export import RunPaths, export_record, summary_line

    paths = RunPaths.under(args.root, params=args.params, metrics=args.metrics, aggregate=args.aggregate, curves=args.curves)
    folder = export_record(args.name, args.date, args.out, paths, method=args.method, author=args.author, github_id=args.github_id,
                           hardware=args.hardware, force=args.force)
    print(summary_line(folder))
    return 0


def add_submission_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("submission", help="a record folder for the challenge from a finished run")
    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="write <out>/<date>_<name>/: train_gpt.py, submission.json, README.md, requirements.txt, metrics")
    export.add_argument("--name", required=True, help="the record's name (folder suffix)")
    export.add_argument("--date", help="YYYY-MM-DD (default: today)")
    export.add_argument("--out", default="records/track_10min_16mb", help="parent folder (default: records/track_10min_16mb)")
    export.add_argument("--root", default=".", help="the run's checkout (default: .)")
    export.add_argument("--params", default="params.yaml", help="params file under --root")
    export.add_argument("--metrics", default="metrics", help="metrics directory under --root")
    export.add_argument("--aggregate", default="data/aggregate", help="the extra seeds' outputs under --root")
    export.add_argument("--curves", default="dvclive/train", help="training curves under --root")
    export.add_argument("--method", help="evaluation method the record claims (default: the lowest mean val_bpb)")
    export.add_argument("--author", default="", help="submission.json author")
    export.add_argument("--github-id", default="", help="submission.json github_id")
    export.add_argument("--hardware", help="submission.json hardware (default: the device kind and count in the run's provenance)")
    export.add_argument("--force", action="store_true", help="replace an existing folder")
    export.set_defaults(func=_export)
