"""Documents -> token shards in the official format (the `export` stage).

Each document becomes BOS followed by its ids (no EOS). The first `val_docs` documents go to
``fineweb_val_*`` shards, the rest to ``fineweb_train_*``; every shard but the last of a split holds
exactly `shard_tokens` tokens, documents running on across shard boundaries as in the official
exporter. Batches are tokenized in worker processes but consumed in order, so the shards are the
same for any worker count. When the fetch holds the official shards and the tokenizer is the
official one, the shards are validated and linked instead of re-tokenized.

When the tokenizer names a text transform (tokenizer.json `text_transform`, e.g. caseops), every
document is transformed before it is encoded, and each validation shard gets its byte sidecar
(`pgolf.bytetable.sidecar_name`): per token, the UTF-8 bytes of the *original* text it stands for,
as the records' prepare_caseops_data.py counts them: the bytes of the token's surface (SentencePiece's
alignment of the piece to the transformed input) with operator characters counting 0 (an escaped
operator counts its 3 bytes), BOS 0. The manifest then says `val_byte_sidecar: true`.

Workers are started with the `spawn` method (no fork of a process that may hold threads), so a
script calling `export_shards` with workers > 1 needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from pgolf.bytetable import load_processor, load_sidecar, sidecar_name
from pgolf.casetransform import TextTransform, get_transform
from pgolf.config.data import ExportParams
from pgolf.data.docs import Fetched, iter_docs
from pgolf.data.shards import SHARDS_MANIFEST, TOKEN_DTYPE, list_shards, read_shard, shard_name, write_shard
from pgolf.errors import DataError
from pgolf.io import atomic_dir, write_json_atomic
from pgolf.tokenizer import TokenizerInfo, encode_with_surfaces, read_tokenizer

log = logging.getLogger(__name__)

BATCHES_IN_FLIGHT_PER_WORKER = 2


@functools.lru_cache(maxsize=2)
def _processor(model_path: str) -> spm.SentencePieceProcessor:
    return load_processor(model_path)


def encode_batch(
    model_path: str, first_doc: int, texts: list[str], transform_name: str = "none", sidecar_docs: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Tokenize documents after their text transform: (BOS + ids of each, concatenated, as uint16; tokens
    per document; for the first `sidecar_docs` documents, their tokens' original byte counts, else None)."""
    sp = _processor(model_path)
    transform = get_transform(transform_name)
    texts = [transform.forward(text) for text in texts]
    try:
        surfaces = encode_with_surfaces(sp, texts[:sidecar_docs])
        encoded = [ids.tolist() for ids, _, _ in surfaces] + sp.encode(texts[sidecar_docs:])
        counts = _sidecar_counts(transform, first_doc, texts, surfaces) if sidecar_docs else None
    except (TypeError, RuntimeError, UnicodeError):
        raise _first_unencodable(sp, first_doc, texts) from None
    bos, vocab = sp.bos_id(), sp.vocab_size()
    flat: list[int] = []
    for ids in encoded:
        flat.append(bos)
        flat.extend(ids)
    tokens = np.array(flat, dtype=np.int64)
    if tokens.size and int(tokens.max()) >= vocab:
        position = int(np.argmax(tokens >= vocab))
        raise DataError(f"token id {int(tokens[position])} >= vocab_size {vocab} in batch from document {first_doc}")
    lengths = np.array([len(ids) + 1 for ids in encoded], dtype=np.int64)
    return tokens.astype(TOKEN_DTYPE), lengths, counts


def _sidecar_counts(
    transform: TextTransform, first_doc: int, texts: list[str], surfaces: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> np.ndarray:
    """BOS 0, then each token's original bytes: the transform's byte costs summed over its surface."""
    parts = []
    for offset, (ids, begins, ends) in enumerate(surfaces):
        costs = np.concatenate([[0], np.cumsum(transform.byte_costs(texts[offset].encode("utf-8")))])
        counts = np.concatenate([[0], costs[ends] - costs[begins]])
        if counts.max() > np.iinfo(TOKEN_DTYPE).max:
            raise DataError(f"document {first_doc + offset}: a token stands for {int(counts.max())} bytes, more than a sidecar entry (uint16) holds")
        parts.append(counts)
    return np.concatenate(parts).astype(TOKEN_DTYPE)


def _first_unencodable(sp: spm.SentencePieceProcessor, first_doc: int, texts: list[str]) -> DataError:
    for offset, text in enumerate(texts):
        try:
            sp.encode(text)
        except (TypeError, RuntimeError, UnicodeError):
            return DataError(f"document {first_doc + offset} cannot be tokenized (invalid Unicode, e.g. a lone surrogate): {text[:40]!r}")
    return DataError(f"documents {first_doc}..{first_doc + len(texts) - 1} could not be tokenized")


def _batches(docs_path: Path, batch_docs: int) -> Iterator[tuple[int, list[str]]]:
    batch: list[str] = []
    start = 0
    for text in iter_docs(docs_path):
        batch.append(text)
        if len(batch) == batch_docs:
            yield start, batch
            start += len(batch)
            batch = []
    if batch:
        yield start, batch


def _encoded(
    batches: Iterator[tuple[int, list[str]]], model_path: str, workers: int, transform_name: str, sidecar_until: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Encoded batches in input order (sidecar counts for documents before `sidecar_until`); at most a
    few batches per worker are in flight."""
    if workers == 1:
        for start, texts in batches:
            yield encode_batch(model_path, start, texts, transform_name, max(min(sidecar_until - start, len(texts)), 0))
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: deque = deque()
        for start, texts in batches:
            sidecar_docs = max(min(sidecar_until - start, len(texts)), 0)
            pending.append(pool.apply_async(encode_batch, (model_path, start, texts, transform_name, sidecar_docs)))
            if len(pending) >= workers * BATCHES_IN_FLIGHT_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _ShardWriter:
    """Fills shards of one split to exactly `shard_tokens` tokens, in order (with `sidecar`, each
    shard's byte sidecar alongside, cut at the same places)."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, sidecar: bool = False) -> None:
        self.out_dir, self.split = out_dir, split
        self.buffer = np.empty(shard_tokens, dtype=TOKEN_DTYPE)
        self.counts = np.empty(shard_tokens, dtype=TOKEN_DTYPE) if sidecar else None
        self.fill = self.files = self.tokens = self.docs = 0

    def add(self, tokens: np.ndarray, docs: int, counts: np.ndarray | None = None) -> None:
        self.docs += docs
        self.tokens += tokens.size
        pos = 0
        while pos < tokens.size:
            take = min(self.buffer.size - self.fill, tokens.size - pos)
            self.buffer[self.fill : self.fill + take] = tokens[pos : pos + take]
            if self.counts is not None:
                self.counts[self.fill : self.fill + take] = counts[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self.buffer.size:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            write_shard(self.out_dir / shard_name(self.split, self.files), self.buffer[: self.fill])
            if self.counts is not None:
                write_shard(self.out_dir / sidecar_name(self.files), self.counts[: self.fill])
            self.files += 1
            self.fill = 0


def export_shards(fetched: Fetched, tokenizer_dir: str | Path, params: ExportParams, out_dir: str | Path) -> dict[str, Any]:
    """The export stage: write out_dir/fineweb_{val,train}_NNNNNN.bin and manifest.json atomically.

    Returns the manifest. DataError when there is nothing to export, no training document is left,
    or a token id does not fit the vocabulary.
    """
    tokenizer = read_tokenizer(tokenizer_dir)
    transform = get_transform(tokenizer.text_transform)
    official = fetched.source == "hf" and fetched.shards_dir is not None and tokenizer.source == "official"
    with atomic_dir(out_dir) as tmp:
        if official:
            stats = _link_official(fetched, tokenizer, tmp)
        else:
            stats = _tokenize(fetched, tokenizer, params, tmp)
        manifest = {
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
            **stats,
            "tokenizer_sha256": tokenizer.sha256,
            "fetch_source": fetched.source,
            **({} if transform.identity else {"text_transform": transform.name, "val_byte_sidecar": True}),
        }
        write_json_atomic(tmp / SHARDS_MANIFEST, manifest)
    for key, value in manifest.items():
        log.info("%s: %s", key, value)
    return manifest


def _tokenize(fetched: Fetched, tokenizer: TokenizerInfo, params: ExportParams, out_dir: Path) -> dict[str, Any]:
    if fetched.docs_path is None:
        raise DataError(f"{fetched.root}: the fetch has no documents to tokenize (fetch.with_docs: true, or tokenizer.reuse: official)")
    if fetched.num_docs is not None and params.val_docs >= fetched.num_docs:
        raise DataError(f"export.val_docs={params.val_docs} leaves no training documents ({fetched.num_docs} fetched)")
    sidecar = not get_transform(tokenizer.text_transform).identity  # the byte table cannot count transformed tokens
    writers = {split: _ShardWriter(out_dir, split, params.shard_tokens, sidecar and split == "val") for split in ("val", "train")}
    batches = _batches(fetched.docs_path, params.batch_docs)
    progress = tqdm(total=fetched.num_docs, unit="doc", desc="export", mininterval=1.0, disable=None)
    done = 0
    encoded = _encoded(batches, str(tokenizer.model_path), params.workers, tokenizer.text_transform, params.val_docs if sidecar else 0)
    with progress:
        for tokens, lengths, counts in encoded:
            n_val = min(max(params.val_docs - done, 0), lengths.size)
            cut = int(lengths[:n_val].sum())
            writers["val"].add(tokens[:cut], n_val, counts)
            writers["train"].add(tokens[cut:], lengths.size - n_val)
            done += lengths.size
            progress.update(lengths.size)
    for writer in writers.values():
        writer.flush()
    if fetched.num_docs is not None and done != fetched.num_docs:
        raise DataError(f"{fetched.docs_path}: {done} documents, the fetch manifest says {fetched.num_docs}")
    if writers["train"].docs == 0:
        raise DataError(f"export.val_docs={params.val_docs} leaves no training documents ({done} in {fetched.docs_path})")
    return {
        "source": "tokenized",
        **{f"{key}_{split}": getattr(w, key) for key in ("docs", "tokens", "files") for split, w in writers.items()},
        "shard_tokens": params.shard_tokens,
    }


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _link_official(fetched: Fetched, tokenizer: TokenizerInfo, out_dir: Path) -> dict[str, Any]:
    """Validate the fetched official shards and hard-link (or copy) them; count documents by BOS."""
    stats: dict[str, Any] = {"source": "official"}
    largest = 0
    for split in ("val", "train"):
        paths = list_shards(fetched.shards_dir, split)
        if not paths:
            raise DataError(f"{fetched.shards_dir}: no {split} shards in the official fetch")
        if split == "val" and not get_transform(tokenizer.text_transform).identity:
            _link_sidecar(fetched, tokenizer, paths, out_dir)
        docs = tokens = 0
        for path in tqdm(paths, desc=f"check {split}", unit="shard", mininterval=1.0, disable=None):
            data = read_shard(path)
            if data.size and int(data.max()) >= tokenizer.vocab_size:
                raise DataError(f"{path}: token id {int(data.max())} >= vocab_size {tokenizer.vocab_size}")
            docs += int(np.count_nonzero(data == tokenizer.bos_id))
            tokens += data.size
            largest = max(largest, data.size)
            _link(path, out_dir / path.name)
        stats.update({f"docs_{split}": docs, f"tokens_{split}": tokens, f"files_{split}": len(paths)})
    stats = {key: stats[key] for key in ("source", "docs_val", "docs_train", "tokens_val", "tokens_train", "files_val", "files_train")}
    return {**stats, "shard_tokens": largest}


def _link_sidecar(fetched: Fetched, tokenizer: TokenizerInfo, val_paths: list[Path], out_dir: Path) -> None:
    """Validate the fetched byte sidecar of case-transformed official shards (one count per token) and link it."""
    if not fetched.val_byte_sidecar:
        raise DataError(
            f"{fetched.shards_dir}: tokenizer text_transform {tokenizer.text_transform!r} needs the validation byte "
            "sidecar, which the fetch lacks (fetch.val_byte_sidecar: true)"
        )
    load_sidecar(val_paths)
    for index in range(len(val_paths)):
        _link(fetched.shards_dir / sidecar_name(index), out_dir / sidecar_name(index))
