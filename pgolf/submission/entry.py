"""The program a submission's train_gpt.py runs (pgolf.submission.bundle embeds this module, its
import closure and the run's effective params): train, calibrate, quantize, pack and evaluate as
the DVC stages do, into one output directory, with no params.yaml and no environment variables.

    torchrun --standalone --nproc_per_node=8 train_gpt.py --shards DIR --tokenizer FILE --out DIR
    python train_gpt.py ...                       # train.nproc 1 (the CPU test path)

The training ranks train (and collect the GPTQ Hessians with calibrate.on_train_ranks); rank 0
then calibrates, quantizes, packs and scores the artifact by every embedded evaluation method.
The code counted is the program's own file: the quantize fit (quantize.target_bytes) and the pack
stage are given code_bytes = len(train_gpt.py), so bytes_total = bytes_model + len(train_gpt.py),
gated by pack.limit_bytes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pgolf.config.base import Section, validate_section
from pgolf.config.calibrate import CalibrateParams
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.config.train import TrainParams
from pgolf.data.shards import list_shards
from pgolf.dist import launched_by_torchrun
from pgolf.errors import DataError, ParamsError, PgolfError
from pgolf.eval.methods import METHODS
from pgolf.eval.run import eval_stage
from pgolf.io import write_json_atomic
from pgolf.stage import EXIT_BAD_PARAMS, EXIT_FAILED, EXIT_INTERRUPTED, setup_logging

log = logging.getLogger(__name__)

SECTIONS: dict[str, type[Section]] = {"train": TrainParams, "calibrate": CalibrateParams, "quantize": QuantizeParams, "pack": PackParams}
EVAL_PREFIX = "eval_"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train_gpt.py", description="Train, quantize, pack and evaluate this submission's model.")
    parser.add_argument("--shards", type=Path, default=Path("data/shards"), help="directory of the fineweb_{train,val}_*.bin shards and manifest.json")
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.model"), help="the SentencePiece model")
    parser.add_argument("--out", type=Path, default=Path("run"), help="output directory (checkpoint, artifact, metrics, train.log)")
    parser.add_argument("--steps", type=int, help="override train.iterations (short test runs)")
    parser.add_argument("--seed", type=int, help="override train.seed (one run per seed)")
    parser.add_argument("--methods", nargs="+", help="evaluate only these of the embedded methods")
    return parser.parse_args(argv)


def effective_params(embedded: dict, args: argparse.Namespace) -> tuple[dict[str, Section], dict[str, Section]]:
    """The validated stage sections and eval sections {method: params}, with the command line's overrides."""
    train = dict(embedded.get("train") or {})
    train["resume_dir"] = str(args.out / "resume")  # never a resume state from elsewhere
    if args.steps is not None:
        train["iterations"] = args.steps
    if args.seed is not None:
        train["seed"] = args.seed
    raw = {**embedded, "train": train}
    stages = {name: validate_section(model, raw.get(name), name) for name, model in SECTIONS.items()}
    embedded_methods = [k[len(EVAL_PREFIX):] for k in raw if k.startswith(EVAL_PREFIX)]
    chosen = args.methods or embedded_methods
    unknown = [m for m in chosen if m not in embedded_methods or m not in METHODS]
    if unknown:
        raise ParamsError(f"--methods: {', '.join(unknown)} not embedded (embedded: {', '.join(embedded_methods)})")
    evals = {m: validate_section(METHODS[m].params, raw[EVAL_PREFIX + m], EVAL_PREFIX + m) for m in chosen}
    return stages, evals


def run(embedded: dict, args: argparse.Namespace, program: Path) -> dict | None:
    """Every phase; the final metrics on the process that scored the artifact, None on other ranks."""
    from pgolf.pack.pack import pack_stage
    from pgolf.quant.calibrate import calibrate_stage
    from pgolf.quant.stage import quantize_stage
    from pgolf.train.stage import run_train_stage

    stages, evals = effective_params(embedded, args)
    train, calibrate = stages["train"], stages["calibrate"]
    if train.nproc > 1 and not launched_by_torchrun():
        raise ParamsError(f"train.nproc is {train.nproc}: launch with torchrun --standalone --nproc_per_node={train.nproc} {program.name}")
    out, metrics = args.out, args.out / "metrics"
    code_bytes = program.stat().st_size
    if not launched_by_torchrun():
        add_log_file(out / "train.log")
    result = run_train_stage(train, args.shards, out / "train", metrics / "train.json", None, None, calibrate)
    if result is None:
        return None  # not rank 0: training was this process's share
    if launched_by_torchrun():
        add_log_file(out / "train.log")
    checkpoint = out / "train" / "checkpoint"
    train_shards = list_shards(args.shards, "train")[:1]
    if not train_shards:
        raise DataError(f"{args.shards}: no training shard to calibrate on")
    calibrate_stage(calibrate, checkpoint, train_shards, out / "calibrate", metrics / "calibrate.json")
    quantize_stage(stages["quantize"], checkpoint, out / "calibrate", out / "quantize", metrics / "quantize.json", stages["pack"], code_bytes=code_bytes)
    packed = pack_stage(stages["pack"], out / "quantize", out / "pack", metrics / "pack.json", tokenizer=args.tokenizer, code_bytes=code_bytes)
    scores = {m: eval_stage(m, p, out / "pack", args.shards, args.tokenizer, checkpoint, metrics / f"eval_{m}.json")["val_bpb"]
              for m, p in evals.items()}
    summary = {"seed": train.seed, "steps": result.steps, "val_bpb": scores, "bytes_model": packed.bytes_model,
               "bytes_code": code_bytes, "bytes_total": packed.bytes_total}
    write_json_atomic(out / "result.json", summary)
    log.info("final: %s", " ".join(f"val_bpb@{m} {v:.6f}" for m, v in scores.items()) + f" bytes_total {packed.bytes_total}")
    return summary


def add_log_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def main(embedded: dict, argv: list[str], program: str) -> int:
    """Exit status: 0 done, 1 a failure (one line), 2 bad params or flags, 130 interrupted."""
    setup_logging()
    args = parse_args(argv)
    try:
        run(embedded, args, Path(program))
    except ParamsError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_PARAMS
    except PgolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
