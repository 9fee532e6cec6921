"""SentencePiece BPE with the challenge's settings (the byte table behind val_bpb is `pgolf.bytetable`).

`train_tokenizer` trains on the documents it is given (the stage passes training documents only,
never validation ones) and is deterministic: the same input gives a byte-identical model. With a
text transform (`tokenizer.text_transform`, `pgolf.casetransform`) it trains on the transformed
text, with the transform's operator symbols reserved as user-defined pieces as the records do, and
tokenizer.json names the transform: export then applies it to every document.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from pgolf.bytetable import SPACE_PIECE, load_processor
from pgolf.casetransform import TextTransform, get_transform
from pgolf.config.data import ExportParams, TokenizerParams
from pgolf.data.docs import Fetched, iter_docs, read_fetched, sha256_file
from pgolf.errors import DataError, PgolfError
from pgolf.io import atomic_dir, read_json, write_json_atomic

log = logging.getLogger(__name__)

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
BYTE_PIECES = 256
MAX_VOCAB = 1 << 16  # token ids are stored as uint16
MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"
INFO_FILE = "tokenizer.json"
# Documents are fed whole; the trainer silently skips sentences longer than its
# max_sentence_length, so longer documents are cut into pieces of at most this many bytes.
MAX_SENTENCE_BYTES = 1 << 16


def trainer_options(params: TokenizerParams) -> dict[str, Any]:
    """The SentencePiece trainer settings of the official tokenizer (CHALLENGE.md 'Tokenizer')."""
    return {
        "model_type": "bpe",
        "vocab_size": params.vocab_size,
        "character_coverage": params.character_coverage,
        "byte_fallback": True,
        "split_digits": True,
        "normalization_rule_name": "nmt_nfkc",
        "add_dummy_prefix": False,
        "pad_id": PAD_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "unk_id": UNK_ID,
        "hard_vocab_limit": False,
        "num_threads": params.num_threads,
        "max_sentence_length": MAX_SENTENCE_BYTES,
        "minloglevel": 1,
        **_reserved_symbols(get_transform(params.text_transform)),
    }


def _reserved_symbols(transform: TextTransform) -> dict[str, Any]:
    """The transform's operators as user-defined pieces (always whole, never merged), as the records reserve them."""
    return {"user_defined_symbols": list(transform.symbols)} if transform.symbols else {}


def trainer_sentences(text: str, limit_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """One document as trainer input: NUL -> space, stripped, cut at whitespace into <= limit_bytes."""
    text = text.replace("\x00", " ").strip()
    while text:
        data = text.encode("utf-8")
        if len(data) <= limit_bytes:
            yield text
            return
        head = data[:limit_bytes].decode("utf-8", errors="ignore")
        cut = max(head.rfind("\n"), head.rfind(" "))
        piece, text = (head[:cut], text[cut:]) if cut > 0 else (head, text[len(head) :])
        text = text.strip()
        if piece.strip():
            yield piece.strip()


@dataclass
class _TrainingCount:
    docs: int = 0
    bytes: int = 0


def _capped(docs: Iterable[str], max_bytes: int, count: _TrainingCount) -> Iterator[str]:
    """Documents in order while their UTF-8 total stays within max_bytes (the first always goes in)."""
    for text in docs:
        size = len(text.encode("utf-8"))
        if count.docs and count.bytes + size > max_bytes:
            return
        count.docs += 1
        count.bytes += size
        yield text


def train_tokenizer(docs: Iterable[str], params: TokenizerParams, out_dir: str | Path) -> Path:
    """Train on `docs` (capped at params.max_train_bytes, in order); write out_dir/tokenizer.{model,vocab}.

    Returns the model path. Deterministic: no sampling or shuffling of the input.
    Raises PgolfError if there is no text or the trainer refuses the settings.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = _TrainingCount()
    model = io.BytesIO()
    forward = get_transform(params.text_transform).forward  # the trainer sees what export will encode
    sentences = (s for text in _capped(docs, params.max_train_bytes, count) for s in trainer_sentences(forward(text)))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,  # a model_prefix would be recorded in the model, breaking determinism
            **trainer_options(params),
        )
    except RuntimeError as exc:
        raise _trainer_error(str(exc), params, count) from None
    log.info("train_docs: %d", count.docs)
    log.info("train_bytes: %d", count.bytes)
    path = out_dir / MODEL_FILE
    path.write_bytes(model.getvalue())
    sp = load_processor(path)
    check_tokenizer(sp, path, get_transform(params.text_transform))
    write_vocab(sp, out_dir / VOCAB_FILE)
    return path


def _trainer_error(message: str, params: TokenizerParams, count: _TrainingCount) -> PgolfError:
    """One actionable line for a SentencePiece trainer failure (its messages quote C++ checks)."""
    if count.docs == 0:
        return DataError("tokenizer: no training documents to train on")
    if "sentences_.empty()" in message:
        return DataError(f"tokenizer: the {count.docs} training documents hold no non-blank text")
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_small:
        return PgolfError(
            f"tokenizer.vocab_size={params.vocab_size} is too small: the training text needs at least "
            f"{too_small.group(2)} ids (special, byte and required-character pieces); raise it"
        )
    reason = re.sub(r"^.*?\] ", "", message.strip().splitlines()[-1]) if message.strip() else "unknown error"
    return PgolfError(f"tokenizer: SentencePiece refused the settings (vocab_size={params.vocab_size}): {reason}")


def check_tokenizer(sp: spm.SentencePieceProcessor, where: str | Path, transform: TextTransform | None = None) -> None:
    """The properties the shards and the byte accounting rely on; DataError naming the first broken one.

    With a transform, each of its operator symbols must be a piece of its own (a tokenizer trained
    without them would spell operators in byte-fallback pieces, or merge them into words).
    """
    if sp.vocab_size() > MAX_VOCAB:
        raise DataError(f"{where}: vocab size {sp.vocab_size()} does not fit uint16 token ids")
    if sp.bos_id() != BOS_ID:
        raise DataError(f"{where}: BOS id is {sp.bos_id()}, shards need {BOS_ID}")
    if sp.piece_to_id(SPACE_PIECE) == sp.unk_id():
        raise DataError(f"{where}: no standalone '{SPACE_PIECE}' piece: spaces would be byte-fallback (3 bytes each)")
    for symbol in transform.symbols if transform else ():
        piece = sp.piece_to_id(symbol)
        if piece == sp.unk_id() or sp.encode(f"a{symbol}a")[1:2] != [piece]:
            raise DataError(f"{where}: operator U+{ord(symbol):04X} of text transform {transform.name!r} is not a reserved piece: not a {transform.name} tokenizer")


def write_vocab(sp: spm.SentencePieceProcessor, path: Path) -> None:
    """The `.vocab` listing (piece TAB score per line), for a model that came without one."""
    lines = (f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    path.write_text("".join(lines), encoding="utf-8")


@dataclass(frozen=True)
class TokenizerInfo:
    """What data/tokenizer/tokenizer.json says about the model next to it."""

    model_path: Path
    vocab_size: int
    bos_id: int
    source: str
    sha256: str
    text_transform: str = "none"  # applied to every document before encoding (pgolf.casetransform)


def read_tokenizer(tokenizer_dir: str | Path) -> TokenizerInfo:
    """Read tokenizer.json and check that the model beside it is the one it describes (and its transform is known)."""
    tokenizer_dir = Path(tokenizer_dir)
    info = read_json(tokenizer_dir / INFO_FILE, "tokenizer description")
    model = tokenizer_dir / MODEL_FILE
    if not isinstance(info, dict) or not {"vocab_size", "bos_id", "source", "sha256"} <= info.keys():
        raise DataError(f"{tokenizer_dir / INFO_FILE}: needs vocab_size, bos_id, source and sha256")
    if not model.is_file():
        raise DataError(f"{model}: tokenizer model not found")
    digest = sha256_file(model)
    if digest != info["sha256"]:
        raise DataError(f"{model}: sha256 {digest[:12]}... differs from {INFO_FILE} ({str(info['sha256'])[:12]}...)")
    transform = get_transform(str(info.get("text_transform", "none"))).name
    return TokenizerInfo(model, int(info["vocab_size"]), int(info["bos_id"]), str(info["source"]), digest, transform)


def _training_docs(fetched: Fetched, val_docs: int) -> Iterator[str]:
    if fetched.docs_path is None:
        raise DataError(f"{fetched.root}: the fetch has no documents to train a tokenizer on (use tokenizer.reuse: official)")
    if fetched.num_docs is not None and fetched.num_docs <= val_docs:
        raise DataError(f"export.val_docs={val_docs} leaves no training documents ({fetched.num_docs} fetched)")
    return iter_docs(fetched.docs_path, start=val_docs)


def build_tokenizer(
    fetched_dir: str | Path, params: TokenizerParams, export: ExportParams, out_dir: str | Path
) -> dict[str, Any]:
    """The tokenizer stage: train on documents [export.val_docs:] or copy the official model.

    Writes out_dir/{tokenizer.model, tokenizer.vocab, tokenizer.json} atomically; returns the json.
    """
    fetched = read_fetched(fetched_dir)
    with atomic_dir(out_dir) as tmp:
        if params.reuse == "official":
            info = _copy_official(fetched, params, tmp)
        else:
            count = _TrainingCount()
            docs = _training_docs(fetched, export.val_docs)
            train_tokenizer(_capped(docs, params.max_train_bytes, count), params, tmp)
            info = {
                "source": "trained",
                "train_docs_start": export.val_docs,
                "train_docs_count": count.docs,
                "train_bytes": count.bytes,
            }
        sp = load_processor(tmp / MODEL_FILE)
        transform = get_transform(params.text_transform)
        info = {
            "vocab_size": sp.vocab_size(),
            "bos_id": sp.bos_id(),
            **info,
            **({} if transform.identity else {"text_transform": transform.name}),
            "sha256": sha256_file(tmp / MODEL_FILE),
        }
        write_json_atomic(tmp / INFO_FILE, info)
    for key, value in info.items():
        log.info("%s: %s", key, value)
    return info


def _copy_official(fetched: Fetched, params: TokenizerParams, out_dir: Path) -> dict[str, Any]:
    source = fetched.tokenizer_model
    if source is None:
        raise DataError(f"{fetched.root}: tokenizer.reuse is 'official' but the fetch has no tokenizer model (fetch.source: hf)")
    transform = get_transform(params.text_transform)
    declared = fetched.manifest.get("text_transform")
    if declared is not None and declared != transform.record_name:
        raise DataError(f"{source.name}: the official set was made with text transform {declared!r}, not tokenizer.text_transform {params.text_transform!r} ({transform.record_name})")
    if fetched.val_byte_sidecar and transform.identity:
        raise DataError(f"{fetched.root}: the fetch holds a validation byte sidecar (a case-transformed set): set tokenizer.text_transform")
    sp = load_processor(source)
    check_tokenizer(sp, source, transform)
    if sp.vocab_size() != params.vocab_size:
        raise DataError(f"tokenizer.vocab_size={params.vocab_size} but the official tokenizer {source.name} has {sp.vocab_size()}")
    shutil.copyfile(source, out_dir / MODEL_FILE)
    vocab = source.with_suffix(".vocab")
    if vocab.is_file():
        shutil.copyfile(vocab, out_dir / VOCAB_FILE)
    else:
        write_vocab(sp, out_dir / VOCAB_FILE)
    return {"source": "official", "official_model": source.name}


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _piece_spans(proto: bytes) -> tuple[list[int], list[int], list[int]]:
    """(ids, begins, ends) of the pieces of a serialized SentencePieceText (sentencepiece.proto:
    field 2 = pieces, each with 2 = id, 4 = begin, 5 = end: byte offsets of its surface in the input)."""
    ids: list[int] = []
    begins: list[int] = []
    ends: list[int] = []
    at, size = 0, len(proto)
    while at < size:
        key, at = _varint(proto, at)
        wire = key & 7
        if wire == 5:  # SentencePieceText.score (fixed32)
            at += 4
            continue
        if wire != 2:
            raise DataError(f"unexpected field {key >> 3} (wire type {wire}) in a SentencePiece result")
        length, at = _varint(proto, at)
        stop = at + length
        if key >> 3 != 2:  # the text itself
            at = stop
            continue
        fields = [0] * 6
        while at < stop:
            key, at = _varint(proto, at)
            if key & 7 == 2:
                length, at = _varint(proto, at)
                at += length
            else:
                value, at = _varint(proto, at)
                if key >> 3 < len(fields):
                    fields[key >> 3] = value
        ids.append(fields[2])
        begins.append(fields[4])
        ends.append(fields[5])
    return ids, begins, ends


def encode_with_surfaces(sp: spm.SentencePieceProcessor, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per text: token ids and the UTF-8 byte span [begin, end) of each token's surface in the text.

    Surfaces are SentencePiece's own alignment of pieces to the input (the records' `piece.surface`):
    they tile the text except the whitespace the normalizer drops at either end; of a character spelled
    in several byte-fallback pieces the last piece carries the whole character.
    """
    results = []
    for proto in sp.encode(texts, out_type="serialized_proto"):
        ids, begins, ends = _piece_spans(proto)
        results.append((np.array(ids, dtype=np.int64), np.array(begins, dtype=np.int64), np.array(ends, dtype=np.int64)))
    return results


def _kind(sp: spm.SentencePieceProcessor, ch: str) -> str:
    """How the normalizer treats one character: "kept", "space" (whitespace) or "deleted"."""
    if sp.normalize(ch):
        return "kept"
    return "space" if sp.normalize(f"a{ch}b") != "ab" else "deleted"


def dropped_edge_bytes(sp: spm.SentencePieceProcessor, text: str) -> int:
    """UTF-8 bytes of `text` that no piece's surface covers: the normalizer drops whitespace and deleted
    characters before the first kept character, and whitespace (with anything after it) after the last;
    deleted characters right after the last kept one stay in its surface."""
    start, last = 0, len(text) - 1
    while start <= last and _kind(sp, text[start]) != "kept":
        start += 1
    while last > start and _kind(sp, text[last]) != "kept":
        last -= 1
    stop = last + 1 if start <= last else start
    while start < stop < len(text) and _kind(sp, text[stop]) == "deleted":
        stop += 1
    return len(text.encode("utf-8")) - len(text[start:stop].encode("utf-8"))
