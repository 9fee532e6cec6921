"""The program a submission's train_gpt.py runs (pgolf.submission.bundle embeds this module, its
import closure and the run's effective params): train, calibrate, quantize, pack and evaluate as
the DVC stages do, into one output directory, with no params.yaml and no environment variables.

    torchrun --standalone --nproc_per_node=8 train_gpt.py --shards DIR --tokenizer FILE --out DIR
    python train_gpt.py ...                       # train.nproc 1 (the CPU test path)

The training ranks train (and collect the GPTQ Hessians with calibrate.on_train_ranks); rank 0
then calibrates, quantizes, packs and scores the artifact by every embedded evaluation method.
The code counted is the program's own file: bytes_total = bytes_model + len(train_gpt.py), gated
by pack.limit_bytes as the pack stage gates its own accounting.
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
from pgolf.errors import ArtifactError, DataError, ParamsError, PgolfError
from pgolf.eval.methods import METHODS
from pgolf.eval.run import eval_stage
from pgolf.io import atomic_dir, write_json_atomic, write_metrics
from pgolf.stage import EXIT_BAD_PARAMS, EXIT_FAILED, EXIT_INTERRUPTED, setup_logging

log = logging.getLogger(__name__)

SECTIONS: dict[str, type[Section]] = {"train": TrainParams, "calibrate": CalibrateParams, "quantize": QuantizeParams, "pack": PackParams}
EVAL_PREFIX = "eval_"
ARTIFACT_NAME = "model.pgolf"


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


def check_total(bytes_model: int, bytes_code: int, limit: int) -> int:
    """bytes_total; an ArtifactError (one line) over the limit."""
    total = bytes_model + bytes_code
    if total > limit:
        raise ArtifactError(f"bytes_total {total} (model {bytes_model} + code {bytes_code}) exceeds pack.limit_bytes {limit} by {total - limit} bytes")
    return total


def quantize(q: QuantizeParams, pack: PackParams, checkpoint: Path, hessians_dir: Path, out: Path, metrics: Path, code_bytes: int) -> None:
    """The quantize stage; with quantize.target_bytes the fit counts this program's bytes as the code."""
    from pgolf.quant.stage import quantize_stage

    if q.target_bytes is None:
        quantize_stage(q, checkpoint, hessians_dir, out, metrics, pack)
        return
    from pgolf.model.checkpoint import load_model, read_checkpoint_json
    from pgolf.quant.calibrate import load_hessians
    from pgolf.quant.ratedistortion import HASH_SLACK, Packer
    from pgolf.quant.stage import fit_metrics, fit_to_budget
    from pgolf.quant.store import save_quantized

    hs = load_hessians(hessians_dir)
    packer = Packer(load_model(checkpoint).state_dict(), {n: hs.hessians[g] for n, g in hs.layers.items()},
                    read_checkpoint_json(checkpoint)["model_config"], pack, code_bytes)
    found = fit_to_budget(packer, q, q.target_bytes - HASH_SLACK)
    with atomic_dir(out) as tmp:
        save_quantized(found.model, tmp)
    write_metrics(metrics, {"method": q.method, "fit": fit_metrics(found, code_bytes, q.target_bytes)}, {})


def pack(params: PackParams, quantized: Path, tokenizer: Path, out: Path, metrics: Path, program: str, code_bytes: int) -> dict:
    """The artifact out/model.pgolf and its accounting, the program's bytes as the code."""
    from pgolf.bytetable import tokenizer_sha256
    from pgolf.pack.pack import pack_metrics, pack_model
    from pgolf.quant.store import load_quantized

    packed = pack_model(load_quantized(quantized), params, {"tokenizer_sha256": tokenizer_sha256(tokenizer)})
    total = check_total(packed.bytes_model, code_bytes, params.limit_bytes)
    with atomic_dir(out) as tmp:
        (tmp / ARTIFACT_NAME).write_bytes(packed.data)
    report = {"artifact": str(out / ARTIFACT_NAME), "bytes_model": packed.bytes_model, "bytes_code": code_bytes, "bytes_total": total,
              "limit_bytes": params.limit_bytes, **pack_metrics(packed, params), "code": {"program": program, "bytes": code_bytes}}
    write_json_atomic(metrics, report)
    log.info("bytes_model: %d bytes_code: %d bytes_total: %d limit_bytes: %d", packed.bytes_model, code_bytes, total, params.limit_bytes)
    return report


def run(embedded: dict, args: argparse.Namespace, program: Path) -> dict | None:
    """Every phase; the final metrics on the process that scored the artifact, None on other ranks."""
    from pgolf.quant.calibrate import calibrate_stage
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
    quantize(stages["quantize"], stages["pack"], checkpoint, out / "calibrate", out / "quantize", metrics / "quantize.json", code_bytes)
    packed = pack(stages["pack"], out / "quantize", args.tokenizer, out / "pack", metrics / "pack.json", program.name, code_bytes)
    scores = {m: eval_stage(m, p, out / "pack", args.shards, args.tokenizer, checkpoint, metrics / f"eval_{m}.json")["val_bpb"]
              for m, p in evals.items()}
    summary = {"seed": train.seed, "steps": result.steps, "val_bpb": scores, "bytes_model": packed["bytes_model"],
               "bytes_code": code_bytes, "bytes_total": packed["bytes_total"]}
    write_json_atomic(out / "result.json", summary)
    log.info("final: %s", " ".join(f"val_bpb@{m} {v:.6f}" for m, v in scores.items()) + f" bytes_total {packed['bytes_total']}")
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
