"""The shared evaluation path: load the packed artifact (dequantized), load the validation tokens
with their byte costs, evaluate by one method; the stage bodies of eval_sliding and eval_ttt.

Every evaluation scores the model rebuilt from the artifact, never the training checkpoint; the
checkpoint is only evaluated the same way to report the quantization gap (artifact - checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgolf.config.eval import EvalPlainParams, EvalSlidingParams, EvalTTTParams
from pgolf.data.shards import SHARDS_MANIFEST, list_shards, load_tokens
from pgolf.errors import DataError
from pgolf.eval.bpb import EvalResult, ValStream, stream_from_tokens
from pgolf.eval.legality import LegalityError, LegalityReport, check_legality
from pgolf.eval.plain import evaluate_plain
from pgolf.eval.sliding import evaluate_sliding
from pgolf.eval.ttt import TTTRunner, make_adapter, run_ttt
from pgolf.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

ARTIFACT_FILE = "model.pgolf"  # the pack stage's file name inside data/pack
METHOD_PARAMS = {"plain": EvalPlainParams, "sliding": EvalSlidingParams, "ttt": EvalTTTParams}


def load_val_stream(shards_dir: str | Path, tokenizer_model: str | Path) -> ValStream:
    """All validation shards as one stream, with each target's bytes from the tokenizer's byte table."""
    from pgolf.tokenizer import byte_table, load_processor

    shards_dir = Path(shards_dir)
    manifest = read_json(shards_dir / SHARDS_MANIFEST, "shards manifest")
    table = byte_table(load_processor(tokenizer_model))
    if manifest.get("vocab_size") != table.vocab_size:
        raise DataError(f"{shards_dir / SHARDS_MANIFEST}: vocab_size {manifest.get('vocab_size')} != tokenizer {tokenizer_model} ({table.vocab_size})")
    paths = list_shards(shards_dir, "val")
    if not paths:
        raise DataError(f"{shards_dir}: no validation shards (fineweb_val_*.bin)")
    stream = stream_from_tokens(load_tokens(paths), table, int(manifest["bos_id"]))
    log.info("val_tokens: %d", stream.num_tokens)
    log.info("val_bytes: %d", int(stream.target_bytes.sum()))
    return stream


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_artifact_model(path: str | Path, device: torch.device | None = None) -> nn.Module:
    """The dequantized model of a packed artifact (a file, or the pack directory holding model.pgolf)."""
    from pgolf.pack.load import load_model_from_artifact

    path = Path(path)
    if path.is_dir():
        path = path / ARTIFACT_FILE
    return load_model_from_artifact(path).to(device or default_device()).eval()


def load_checkpoint_model(directory: str | Path, device: torch.device | None = None) -> nn.Module:
    from pgolf.model.checkpoint import load_model

    return load_model(directory).to(device or default_device()).eval()


def evaluate(method: str, model: nn.Module, stream: ValStream, params: Any) -> EvalResult:
    """One method's result on the stream (ttt: the adapted score)."""
    if method == "plain":
        return evaluate_plain(model, stream, params)[0]
    if method == "sliding":
        return evaluate_sliding(model, stream, params)[0]
    if method == "ttt":
        return run_ttt(model, stream, params).result
    raise ValueError(f"unknown method {method!r} (known: {', '.join(METHOD_PARAMS)})")


def ttt_legality(model: nn.Module, stream: ValStream, params: EvalTTTParams) -> LegalityReport:
    """C1-C4 on the first params.legality_tokens tokens; LegalityError names every failed check."""
    vocab = model.config.vocab_size if hasattr(model, "config") else int(stream.tokens.max()) + 1
    report = check_legality(
        lambda s: TTTRunner(make_adapter(model, params), s, params).run(),
        stream.prefix(params.legality_tokens),
        vocab,
        params.legality_cuts,
        params.seed,
    )
    if not report.passed:
        raise LegalityError(f"TTT legality check failed: {', '.join(report.failures())} ({report.to_dict()})")
    return report


@dataclass(frozen=True)
class TTTReport:
    result: EvalResult
    val_bpb_no_ttt: float
    val_loss_no_ttt: float
    legality: LegalityReport


def evaluate_ttt(model: nn.Module, stream: ValStream, params: EvalTTTParams) -> TTTReport:
    """Legality check first (fails fast), then the frozen chunked scoring and score-first TTT."""
    legality = ttt_legality(model, stream, params)
    frozen = run_ttt(model, stream, params, adapt=False).result
    log.info("val_bpb_no_ttt: %.6f", frozen.val_bpb)
    adapted = run_ttt(model, stream, params).result
    return TTTReport(adapted, frozen.val_bpb, frozen.val_loss, legality)


def _metrics(result: EvalResult, gap: float | None) -> dict[str, Any]:
    out: dict[str, Any] = result.to_dict()
    out["quantization_gap"] = gap
    for key, value in out.items():
        log.info("%s: %s", key, value)
    return out


def _gap(artifact_bpb: float, checkpoint: str | Path | None, score: Any) -> float | None:
    """artifact bpb - checkpoint bpb, the checkpoint scored by the same function; None without one."""
    if checkpoint is None:
        return None
    checkpoint_bpb = score(load_checkpoint_model(checkpoint))
    log.info("checkpoint_val_bpb: %.6f", checkpoint_bpb)
    return artifact_bpb - checkpoint_bpb


def eval_sliding_stage(params: EvalSlidingParams, artifact: str | Path, shards: str | Path, tokenizer: str | Path,
                       checkpoint: str | Path | None, metrics_path: str | Path) -> dict[str, Any]:
    stream = load_val_stream(shards, tokenizer)
    result = evaluate_sliding(load_artifact_model(artifact), stream, params)[0]
    gap = _gap(result.val_bpb, checkpoint, lambda m: evaluate_sliding(m, stream, params)[0].val_bpb)
    metrics = _metrics(result, gap)
    write_json_atomic(metrics_path, metrics)
    return metrics


def eval_ttt_stage(params: EvalTTTParams, artifact: str | Path, shards: str | Path, tokenizer: str | Path,
                   checkpoint: str | Path | None, metrics_path: str | Path) -> dict[str, Any]:
    """Metrics of score-first TTT; quantization_gap is measured on the frozen chunked scoring."""
    stream = load_val_stream(shards, tokenizer)
    report = evaluate_ttt(load_artifact_model(artifact), stream, params)
    gap = _gap(report.val_bpb_no_ttt, checkpoint, lambda m: run_ttt(m, stream, params, adapt=False).result.val_bpb)
    metrics = _metrics(report.result, gap)
    metrics["val_bpb_no_ttt"] = report.val_bpb_no_ttt
    metrics["val_loss_no_ttt"] = report.val_loss_no_ttt
    metrics["ttt_gain_bpb"] = report.val_bpb_no_ttt - report.result.val_bpb
    metrics["legality"] = report.legality.to_dict()
    write_json_atomic(metrics_path, metrics)
    return metrics
