"""Documents as JSONL and the description of what `fetch` produced.

The fetch output directory holds `manifest.json` (pgolf's own, see `Fetched`) and, where there are
documents, `docs.jsonl`: one ``{"text": ...}`` object per line, in the stable (shuffled) order whose
first `export.val_docs` documents are the validation set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.errors import DataError
from pgolf.io import read_json

DOCS_FILE = "docs.jsonl"
FETCH_MANIFEST = "manifest.json"
FETCH_SOURCES = ("builtin", "hf")


@dataclass(frozen=True)
class Fetched:
    """What a fetch directory offers downstream stages (paths are absolute or None)."""

    root: Path
    source: str
    docs_path: Path | None
    num_docs: int | None
    docs_val: int | None
    shards_dir: Path | None
    tokenizer_model: Path | None
    manifest: dict[str, Any]
    val_byte_sidecar: bool = False  # shards_dir also holds fineweb_val_bytes_* (a case-transformed official set)


def _optional_path(root: Path, manifest: dict[str, Any], key: str) -> Path | None:
    value = manifest.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or Path(value).is_absolute() or ".." in Path(value).parts:
        raise DataError(f"{root / FETCH_MANIFEST}: '{key}' must be a relative path inside {root}, got {value!r}")
    path = root / value
    if not path.exists():
        raise DataError(f"{root / FETCH_MANIFEST}: '{key}' names {path}, which does not exist")
    return path


def _optional_int(root: Path, manifest: dict[str, Any], key: str) -> int | None:
    value = manifest.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataError(f"{root / FETCH_MANIFEST}: '{key}' must be a non-negative integer, got {value!r}")
    return value


def read_fetched(root: str | Path) -> Fetched:
    """Read and check `root/manifest.json` as written by the fetch stage."""
    root = Path(root).resolve()
    manifest = read_json(root / FETCH_MANIFEST, "fetch manifest")
    if not isinstance(manifest, dict):
        raise DataError(f"{root / FETCH_MANIFEST}: must hold a JSON object")
    source = manifest.get("source")
    if source not in FETCH_SOURCES:
        raise DataError(f"{root / FETCH_MANIFEST}: 'source' must be one of {FETCH_SOURCES}, got {source!r}")
    return Fetched(
        root=root,
        source=source,
        docs_path=_optional_path(root, manifest, "docs_path"),
        num_docs=_optional_int(root, manifest, "num_docs"),
        docs_val=_optional_int(root, manifest, "docs_val"),
        shards_dir=_optional_path(root, manifest, "shards_dir"),
        tokenizer_model=_optional_path(root, manifest, "tokenizer_model"),
        manifest=manifest,
        val_byte_sidecar=_optional_flag(root, manifest, "val_byte_sidecar"),
    )


def _optional_flag(root: Path, manifest: dict[str, Any], key: str) -> bool:
    value = manifest.get(key, False)
    if not isinstance(value, bool):
        raise DataError(f"{root / FETCH_MANIFEST}: '{key}' must be true or false, got {value!r}")
    return value


def iter_docs(path: str | Path, start: int = 0, stop: int | None = None) -> Iterator[str]:
    """Yield the texts of documents `start` (inclusive) to `stop` (exclusive) of a JSONL file."""
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: documents file not found") from None
    with handle:
        for index, line in enumerate(handle):
            if stop is not None and index >= stop:
                return
            if index < start:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {index + 1} is not valid JSON ({exc.msg})") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{path}: line {index + 1} has no string 'text' field")
            yield text


def encode_doc_line(text: str) -> bytes:
    """One JSONL line for a document (ensure_ascii=False, so the file is compact UTF-8)."""
    return (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
