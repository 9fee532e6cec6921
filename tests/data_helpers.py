"""Builders for the data-stage tests: real English documents and fetch directories made by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pydoc_data.topics

from pgolf.config.data import TokenizerParams
from pgolf.data.docs import DOCS_FILE, FETCH_MANIFEST, encode_doc_line
from pgolf.bytetable import load_processor
from pgolf.tokenizer import train_tokenizer


def english_docs(target_bytes: int = 2000) -> list[str]:
    """pydoc's topic texts (real English prose and code) cut at blank lines into ~target_bytes documents."""
    docs: list[str] = []
    for name in sorted(pydoc_data.topics.topics):
        current = ""
        for para in pydoc_data.topics.topics[name].split("\n\n"):
            current = f"{current}\n\n{para}" if current else para
            if len(current.encode("utf-8")) >= target_bytes:
                docs.append(current)
                current = ""
        if current.strip():
            docs.append(current)
    return docs


def make_fetch_dir(root: Path, docs: list[str], **manifest: object) -> Path:
    """A fetch output directory as the fetch stage writes it for source 'builtin' (overridable)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / DOCS_FILE).open("wb") as handle:
        for text in docs:
            handle.write(encode_doc_line(text))
    record = {"source": "builtin", "docs_path": DOCS_FILE, "num_docs": len(docs), **manifest}
    (root / FETCH_MANIFEST).write_text(json.dumps(record), encoding="utf-8")
    return root


def trained_processor(out_dir: Path, docs: list[str], vocab_size: int = 512):
    """Train a small tokenizer with the official settings and load it."""
    return load_processor(train_tokenizer(docs, TokenizerParams(vocab_size=vocab_size), out_dir))
