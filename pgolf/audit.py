"""The `audit` stage: exact byte accounting and integrity checks on the validation shards.

Before any training, the byte table's total over every validation document must equal the UTF-8
length of that document decoded, exactly; optionally each decoded document must equal the
tokenizer's normalization of its source text; no validation document may appear in the training
shards (pgolf/overlap.py); for the official dataset, the validation document and token counts must
equal those its manifest declares. Any failure raises AuditError naming the first offending
document, and no metrics are written.

With a text transform (caseops) the bytes of each token come from the validation byte sidecar, and
per validation document: operator tokens count 0 bytes (an escaped operator its 3); with the source
documents, the transform inverts exactly (`inverse(forward(source)) == source`), the decoded tokens
equal the tokenizer's normalization of the transformed source, and the sidecar's total equals the
source's UTF-8 length less the characters the normalizer drops at its two ends (leading and trailing
whitespace: no token stands for them, as in the records' sidecar). Inverting the transform on the
decoded tokens gives the normalized source wherever the normalizer leaves case alone; where NFKC
itself spells ASCII capitals (``™`` -> ``TM``, fullwidth letters) it cannot, so those documents are
counted (`transform_inverse_exact_docs`) rather than failed.

The metrics carry the provenance (pgolf.provenance: the audit section, the sha256 of the manifest,
of every shard and of the tokenizer model); the timing sidecar the ledger (pgolf.ledger:
wall_seconds, phases {checks, fingerprints}).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from pgolf.casetransform import TextTransform, TransformError, get_transform
from pgolf.config.data import AuditParams
from pgolf.data.docs import Fetched, iter_docs, read_fetched
from pgolf.data.hub import DATASET_PREFIX, HUB_DIR, MANIFEST
from pgolf.data.shards import SHARDS_MANIFEST, list_shards, load_tokens, read_header, split_documents
from pgolf.errors import AuditError, DataError, ShardError
from pgolf.io import read_json, write_metrics
from pgolf.ledger import Phases
from pgolf.provenance import data_fingerprint, shard_files, stage_provenance
from pgolf.bytetable import SPACE_PIECE, byte_table, load_processor, load_sidecar, stream_bytes
from pgolf.overlap import check_overlap
from pgolf.progress import progress
from pgolf.tokenizer import check_tokenizer, dropped_edge_bytes, read_tokenizer

log = logging.getLogger(__name__)

DECODE_CHUNK_DOCS = 1000
PREVIEW_CHARS = 40


@dataclass(frozen=True)
class AuditResult:
    """Figures of a passed audit (written to metrics/audit.json)."""

    val_docs: int
    val_tokens: int
    val_bytes: int
    bytes_per_token: float
    vocab_size: int
    val_files: int
    train_docs: int
    train_tokens: int
    train_files: int
    byte_fallback_tokens: int
    byte_fallback_share: float
    boundary_tokens: int
    boundary_ids: int
    tokenizer_source: str
    tokenizer_sha256: str
    source_text_checked: bool
    overlap_checked: bool
    overlap_val_docs: int  # validation documents fingerprinted (0 when the check is off)
    overlap_train_docs: int  # training documents compared against them
    text_transform: str = "none"  # the rest is reported only with a transform (bytes from the sidecar)
    val_edge_bytes: int = 0  # source bytes no token stands for (whitespace dropped at document ends)
    transform_inverse_exact_docs: int = 0  # documents whose decoded tokens invert to the normalized source

    def metrics(self) -> dict[str, Any]:
        values = asdict(self)
        if self.text_transform == "none":
            for key in ("text_transform", "val_edge_bytes", "transform_inverse_exact_docs"):
                del values[key]
        return values


def _preview(text: str) -> str:
    return repr(text[:PREVIEW_CHARS])


def _check_manifest(manifest: Any, shards_dir: Path, vocab_size: int, bos_id: int, sha256: str, transform: TextTransform) -> dict[str, Any]:
    where = shards_dir / SHARDS_MANIFEST
    if not isinstance(manifest, dict):
        raise AuditError(f"{where}: must hold a JSON object")
    expected = {"vocab_size": vocab_size, "bos_id": bos_id, "tokenizer_sha256": sha256}
    if not transform.identity:
        expected |= {"text_transform": transform.name, "val_byte_sidecar": True}
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise AuditError(f"{where}: {key} is {manifest.get(key)!r}, the tokenizer has {value!r} (re-run export)")
    if transform.identity and manifest.get("text_transform", "none") != "none":
        raise AuditError(f"{where}: text_transform is {manifest['text_transform']!r}, the tokenizer has none (re-run export)")
    return manifest


def _check_official_counts(fetched: Fetched, docs: int, tokens: int) -> None:
    """For the official dataset: the validation counts its manifest declares must be what the shards hold."""
    if fetched.source != "hf":
        return
    path = fetched.root / HUB_DIR / MANIFEST
    manifest = read_json(path, "official manifest")
    name = fetched.manifest.get("dataset") or f"{DATASET_PREFIX}{fetched.manifest.get('variant')}"
    entry = next((d for d in manifest.get("datasets", []) if isinstance(d, dict) and d.get("name") == name), None) if isinstance(manifest, dict) else None
    if entry is None or not isinstance(entry.get("stats"), dict):
        raise AuditError(f"{path}: no stats for dataset {name!r}")
    for key, counted in (("docs_val", docs), ("tokens_val", tokens)):
        declared = entry["stats"].get(key)
        if declared is not None and declared != counted:
            raise AuditError(f"{path}: dataset {name!r} declares {key} = {declared}, the validation shards hold {counted}")


def _decoded_docs(sp: spm.SentencePieceProcessor, docs: list[np.ndarray]) -> Iterator[str]:
    """Each document's text decoded from its tokens (BOS dropped), decoding a chunk at a time."""
    for start in range(0, len(docs), DECODE_CHUNK_DOCS):
        yield from sp.decode([d[1:].tolist() for d in docs[start : start + DECODE_CHUNK_DOCS]])


def _check_bytes(sp: spm.SentencePieceProcessor, docs: list[np.ndarray], doc_bytes: np.ndarray, sources: Iterator[str] | None) -> None:
    for index, text in enumerate(_decoded_docs(sp, docs)):
        decoded = len(text.encode("utf-8"))
        if decoded != int(doc_bytes[index]):
            raise AuditError(
                f"validation document {index} ({_preview(text)}): byte table counts {int(doc_bytes[index])} bytes, "
                f"its decoded text has {decoded} UTF-8 bytes"
            )
        if sources is None:
            continue
        source = next(sources, None)
        if source is None:
            raise AuditError(f"the fetched documents end before validation document {index}")
        normalized = sp.normalize(source).replace(SPACE_PIECE, " ")
        if normalized != text:
            at = next((i for i, (a, b) in enumerate(zip(normalized, text)) if a != b), min(len(normalized), len(text)))
            raise AuditError(
                f"validation document {index} ({_preview(source)}): decoded tokens differ from the normalized "
                f"source text at character {at}: {text[at : at + 20]!r} vs {normalized[at : at + 20]!r}"
            )


def _check_operator_counts(sp: spm.SentencePieceProcessor, transform: TextTransform, tokens: np.ndarray, per_token: np.ndarray) -> None:
    """Each operator token's sidecar count must be what the transform's byte costs give it: 0, or for an
    operator escaped by the one before it, its UTF-8 length. Only runs of adjacent operators can hold
    an escape (a lone one always counts 0), so only those are costed one by one."""
    symbol_of = {sp.piece_to_id(symbol): symbol for symbol in transform.symbols}
    positions = np.flatnonzero(np.isin(tokens, list(symbol_of)))
    expected = np.zeros(positions.size, dtype=np.int64)
    bounds = np.append(np.flatnonzero(np.diff(positions, prepend=-2) != 1), positions.size)
    for run in np.flatnonzero(np.diff(bounds) > 1).tolist():
        a, b = int(bounds[run]), int(bounds[run + 1])
        symbols = [symbol_of[int(t)] for t in tokens[positions[a:b]]]
        starts = np.cumsum([0] + [len(x.encode("utf-8")) for x in symbols[:-1]])
        expected[a:b] = np.add.reduceat(transform.byte_costs("".join(symbols).encode("utf-8")), starts)
    wrong = np.flatnonzero(per_token[positions] != expected)
    if wrong.size:
        at = int(positions[wrong[0]])
        doc = int(np.count_nonzero(tokens[: at + 1] == sp.bos_id())) - 1
        raise AuditError(
            f"validation document {doc}: the byte sidecar counts {int(per_token[at])} bytes for operator token "
            f"{sp.id_to_piece(int(tokens[at]))!r} at position {at}, not {int(expected[wrong[0]])}"
        )


def _check_transformed(
    sp: spm.SentencePieceProcessor, transform: TextTransform, docs: list[np.ndarray], doc_bytes: np.ndarray, sources: Iterator[str]
) -> tuple[int, int]:
    """Per document against its source (see the module docstring); returns (edge bytes, inverse-exact docs)."""
    edge_total = exact = 0
    for index, text in enumerate(_decoded_docs(sp, docs)):
        source = next(sources, None)
        if source is None:
            raise AuditError(f"the fetched documents end before validation document {index}")
        transformed = transform.forward(source)
        try:
            lossless = transform.inverse(transformed) == source
        except TransformError:
            lossless = False
        if not lossless:
            raise AuditError(f"validation document {index} ({_preview(source)}): the {transform.name} transform does not invert to the source")
        normalized = sp.normalize(transformed).replace(SPACE_PIECE, " ")
        if normalized != text:
            at = next((i for i, (a, b) in enumerate(zip(normalized, text)) if a != b), min(len(normalized), len(text)))
            raise AuditError(
                f"validation document {index} ({_preview(source)}): decoded tokens differ from the normalized "
                f"{transform.name} source at character {at}: {text[at : at + 20]!r} vs {normalized[at : at + 20]!r}"
            )
        edge = dropped_edge_bytes(sp, source)
        expected = len(source.encode("utf-8")) - edge
        if int(doc_bytes[index]) != expected:
            raise AuditError(
                f"validation document {index} ({_preview(source)}): the byte sidecar counts {int(doc_bytes[index])} bytes, "
                f"the source has {expected} UTF-8 bytes (less {edge} dropped at its ends)"
            )
        edge_total += edge
        try:
            exact += transform.inverse(text) == sp.normalize(source).replace(SPACE_PIECE, " ")
        except TransformError:
            pass
    return edge_total, exact


def audit(fetched: Fetched, tokenizer_dir: str | Path, shards_dir: str | Path, params: AuditParams) -> AuditResult:
    """Check the validation shards against the tokenizer; AuditError (or DataError) on the first problem."""
    shards_dir = Path(shards_dir)
    info = read_tokenizer(tokenizer_dir)
    transform = get_transform(info.text_transform)
    sp = load_processor(info.model_path)
    try:
        check_tokenizer(sp, info.model_path, transform)
    except DataError as exc:
        raise AuditError(str(exc)) from None
    manifest = _check_manifest(read_json(shards_dir / SHARDS_MANIFEST, "shards manifest"), shards_dir, sp.vocab_size(), sp.bos_id(), info.sha256, transform)
    val_paths = list_shards(shards_dir, "val")
    train_paths = list_shards(shards_dir, "train")
    if not val_paths:
        raise AuditError(f"{shards_dir}: no validation shards")
    tokens = load_tokens(val_paths)
    if tokens.size and int(tokens.max()) >= sp.vocab_size():
        raise AuditError(f"{shards_dir}: validation token id {int(tokens.max())} >= vocab size {sp.vocab_size()}")
    try:
        docs = split_documents(tokens, sp.bos_id())
    except ShardError as exc:
        raise AuditError(f"{val_paths[0]}: {exc}") from None
    for key, value in (("docs_val", len(docs)), ("tokens_val", int(tokens.size)), ("files_val", len(val_paths)), ("files_train", len(train_paths))):
        if manifest.get(key) != value:
            raise AuditError(f"{shards_dir / SHARDS_MANIFEST}: {key} is {manifest.get(key)!r}, the shards hold {value}")
    _check_official_counts(fetched, len(docs), int(tokens.size))
    train_tokens = sum(read_header(p) for p in train_paths)
    if manifest.get("tokens_train") != train_tokens:
        raise AuditError(f"{shards_dir / SHARDS_MANIFEST}: tokens_train is {manifest.get('tokens_train')!r}, the shards hold {train_tokens}")

    table = byte_table(sp)
    if transform.identity:
        per_token = stream_bytes(table, tokens)
    else:
        try:
            per_token = load_sidecar(val_paths)
        except DataError as exc:
            raise AuditError(str(exc)) from None
        if per_token[tokens == sp.bos_id()].any():
            raise AuditError(f"{shards_dir}: the byte sidecar counts bytes for a BOS token")
        _check_operator_counts(sp, transform, tokens, per_token)
    doc_bytes = np.add.reduceat(per_token, np.flatnonzero(tokens == sp.bos_id()))
    compare = params.compare_source_text and fetched.docs_path is not None
    sources = iter_docs(fetched.docs_path, 0, len(docs)) if compare else None
    edge_bytes = exact_docs = 0
    if transform.identity:
        _check_bytes(sp, docs, doc_bytes, sources)
    elif sources is not None:
        edge_bytes, exact_docs = _check_transformed(sp, transform, docs, doc_bytes, sources)

    overlap = None
    if params.overlap:
        overlap = check_overlap(
            docs, train_paths, sp.bos_id(), params.overlap_min_tokens, params.workers,
            describe=lambda i: f"validation document {i} ({_preview(sp.decode(docs[i][1:].tolist()))})",
            progress=lambda scans: progress(scans, "overlap", total=len(train_paths), unit="shard"),
        )

    is_byte = np.array([sp.is_byte(i) for i in range(sp.vocab_size())], dtype=bool)
    val_bytes = int(per_token.sum())
    fallback = int(is_byte[tokens].sum())
    return AuditResult(
        val_docs=len(docs),
        val_tokens=int(tokens.size),
        val_bytes=val_bytes,
        bytes_per_token=val_bytes / tokens.size,
        vocab_size=sp.vocab_size(),
        val_files=len(val_paths),
        train_docs=int(manifest.get("docs_train", 0)),
        train_tokens=train_tokens,
        train_files=len(train_paths),
        byte_fallback_tokens=fallback,
        byte_fallback_share=fallback / tokens.size,
        boundary_tokens=int(table.is_boundary[tokens].sum()),
        boundary_ids=int(table.is_boundary.sum()),
        tokenizer_source=info.source,
        tokenizer_sha256=info.sha256,
        source_text_checked=compare,
        overlap_checked=overlap is not None,
        overlap_val_docs=overlap.val_docs_checked if overlap else 0,
        overlap_train_docs=overlap.train_docs_checked if overlap else 0,
        text_transform=transform.name,
        val_edge_bytes=edge_bytes,
        transform_inverse_exact_docs=exact_docs,
    )


def run_audit(fetched_dir: str | Path, tokenizer_dir: str | Path, shards_dir: str | Path, params: AuditParams, metrics_path: str | Path) -> AuditResult:
    """The audit stage: audit, then write the metrics JSON atomically (nothing is written on failure)."""
    phases = Phases()
    with phases("checks"):
        result = audit(read_fetched(fetched_dir), tokenizer_dir, shards_dir, params)
    with phases("fingerprints"):
        data = data_fingerprint(shard_files(shards_dir), tokenizer=read_tokenizer(tokenizer_dir).model_path)
    write_metrics(metrics_path, result.metrics(), phases.ledger(), stage_provenance({"audit": params}, data))
    for key, value in result.metrics().items():
        log.info("%s: %s", key, value)
    return result
