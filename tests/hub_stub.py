"""A local stand-in for the hub: a hand-made dataset repo in the official layout, served over HTTP.

`build_hub_repo(dir)` writes a small repo under `dir/datasets/`: manifest.json, one validation and
two training shards (pydoc topic texts tokenized with a tiny SentencePiece BPE trained here with
the official settings), the tokenizer's .model/.vocab, docs_selected.jsonl and its sidecar; and,
as the records' CaseOps repo has it, a second dataset of the same documents after the caseops
transform (variant `sp384_lossless_caps_caseops_v1_reserved`, its tokenizer with the operators
reserved and `text_transform` in its manifest entry) whose validation shard has its byte sidecar
`fineweb_val_bytes_000000.bin` (counts made by pgolf's export code).

`HubStub(dir, repo_id)` serves that directory on 127.0.0.1 (a free port, a daemon thread) with just
what `huggingface_hub.hf_hub_download` needs for a dataset file: HEAD and GET on
`/datasets/{repo_id}/resolve/{revision}/{path}` answering `X-Repo-Commit`, `ETag` (sha256 of the
content), `Content-Length`, and byte ranges. No Xet headers, so the client takes the plain HTTP
path. It counts the GET requests that sent a body, so a test can tell cache hits from downloads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import sentencepiece as spm

from pgolf.data.docs import encode_doc_line
from pgolf.data.shards import encode_shard, shard_name

REPO_ID = "pgolf-tests/parameter-golf-stub"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
VOCAB_SIZE = 384
VARIANT = f"sp{VOCAB_SIZE}"
DATASET = f"fineweb10B_{VARIANT}"
TOKENIZER = f"fineweb_{VOCAB_SIZE}_bpe"
CASEOPS_VARIANT = f"{VARIANT}_lossless_caps_caseops_v1_reserved"
CASEOPS_DATASET = f"fineweb10B_{CASEOPS_VARIANT}"
CASEOPS_TOKENIZER = f"fineweb_{VOCAB_SIZE}_bpe_lossless_caps_caseops_v1_reserved"
VAL_DOCS = 12
TRAIN_SPLIT_AT = 45  # train shard 0 holds docs [VAL_DOCS, 45), train shard 1 the rest
BOS_ID = 1


@dataclass
class HubRepo:
    """Where the stub repo lives and what a correct fetch of it must produce."""

    root: Path
    docs: list[str]
    shard_tokens: dict[str, int]
    caseops_shard_tokens: dict[str, int] = field(default_factory=dict)  # the byte sidecar file included

    def file(self, relative: str) -> Path:
        """A file of the repo, by its path below the remote root `datasets/`."""
        return self.root / "datasets" / relative


def _train_tokenizer(texts: list[str], prefix: Path, **extra: object) -> spm.SentencePieceProcessor:
    spm.SentencePieceTrainer.train(
        **extra,
        sentence_iterator=iter(texts),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=0.999,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="nmt_nfkc",
        add_dummy_prefix=False,
        pad_id=0,
        bos_id=BOS_ID,
        eos_id=2,
        unk_id=3,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=f"{prefix}.model")


def build_hub_repo(root: Path) -> HubRepo:
    """Write the stub repo under `root/datasets/` (see the module docstring)."""
    from pydoc_data.topics import topics

    base = root / "datasets"
    shards_dir = base / "datasets" / DATASET
    (base / "tokenizers").mkdir(parents=True)
    shards_dir.mkdir(parents=True)
    docs = [topics[key].strip() for key in sorted(topics) if topics[key].strip()]
    sp = _train_tokenizer(docs[VAL_DOCS:], base / "tokenizers" / TOKENIZER)

    def tokens(texts: list[str]) -> np.ndarray:
        return np.concatenate([np.asarray([BOS_ID, *ids], dtype=np.int64) for ids in sp.encode(texts)])

    splits = {
        shard_name("val", 0): docs[:VAL_DOCS],
        shard_name("train", 0): docs[VAL_DOCS:TRAIN_SPLIT_AT],
        shard_name("train", 1): docs[TRAIN_SPLIT_AT:],
    }
    shard_tokens = {}
    for name, texts in splits.items():
        toks = tokens(texts)
        (shards_dir / name).write_bytes(encode_shard(toks))
        shard_tokens[name] = int(toks.size)

    docs_bytes = b"".join(encode_doc_line(d) for d in docs)
    (base / "docs_selected.jsonl").write_bytes(docs_bytes)
    sidecar = {
        "num_docs": len(docs),
        "docs_val": VAL_DOCS,
        "shuffle_seed": 1337,
        "docs_sha256": hashlib.sha256(docs_bytes).hexdigest(),
    }
    (base / "docs_selected.source_manifest.json").write_text(json.dumps(sidecar, indent=2))
    tokens_val = shard_tokens[shard_name("val", 0)]
    manifest = {
        "version": "stub",
        "num_docs": len(docs),
        "num_val_docs": VAL_DOCS,
        "datasets": [
            {
                "name": DATASET,
                "tokenizer_name": f"sp_bpe_{VOCAB_SIZE}",
                "tokenizer_kind": "sentencepiece_bpe",
                "vocab_size": VOCAB_SIZE,
                "bos_id": BOS_ID,
                "eos_id": 2,
                "stats": {
                    "docs_total": len(docs),
                    "docs_val": VAL_DOCS,
                    "docs_train": len(docs) - VAL_DOCS,
                    "files_total": 3,
                    "files_val": 1,
                    "files_train": 2,
                    "tokens_total": sum(shard_tokens.values()),
                    "tokens_val": tokens_val,
                    "tokens_train": sum(shard_tokens.values()) - tokens_val,
                },
            }
        ],
        "tokenizers": [
            {
                "name": f"sp_bpe_{VOCAB_SIZE}",
                "kind": "sentencepiece_bpe",
                "vocab_size": VOCAB_SIZE,
                "bos_id": BOS_ID,
                "eos_id": 2,
                "model_path": f"tokenizers/{TOKENIZER}.model",
                "vocab_path": f"tokenizers/{TOKENIZER}.vocab",
            }
        ],
    }
    caseops_tokens = _add_caseops_dataset(base, docs, manifest)
    (base / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return HubRepo(root=root, docs=docs, shard_tokens=shard_tokens, caseops_shard_tokens=caseops_tokens)


def _add_caseops_dataset(base: Path, docs: list[str], manifest: dict) -> dict[str, int]:
    """The case-transformed dataset, its tokenizer and the validation byte sidecar; entries added to `manifest`."""
    from pgolf.bytetable import sidecar_name
    from pgolf.casetransform import OPERATORS, caseops_forward
    from pgolf.data.export import encode_batch

    shards_dir = base / "datasets" / CASEOPS_DATASET
    shards_dir.mkdir(parents=True)
    prefix = base / "tokenizers" / CASEOPS_TOKENIZER
    _train_tokenizer([caseops_forward(d) for d in docs[VAL_DOCS:]], prefix, user_defined_symbols=list(OPERATORS))
    model = f"{prefix}.model"
    val_tokens, _, counts = encode_batch(model, 0, docs[:VAL_DOCS], "caseops", VAL_DOCS)
    files = {
        shard_name("val", 0): val_tokens,
        sidecar_name(0): counts,
        shard_name("train", 0): encode_batch(model, VAL_DOCS, docs[VAL_DOCS:TRAIN_SPLIT_AT], "caseops")[0],
        shard_name("train", 1): encode_batch(model, TRAIN_SPLIT_AT, docs[TRAIN_SPLIT_AT:], "caseops")[0],
    }
    for name, values in files.items():
        (shards_dir / name).write_bytes(encode_shard(values))
    tokens = {name: int(values.size) for name, values in files.items()}
    entry = json.loads(json.dumps(manifest["datasets"][0]))
    entry.update(name=CASEOPS_DATASET, tokenizer_name=f"sp_bpe_{VOCAB_SIZE}_caseops")
    train_tokens = tokens[shard_name("train", 0)] + tokens[shard_name("train", 1)]
    val = tokens[shard_name("val", 0)]
    entry["stats"].update(tokens_val=val, tokens_train=train_tokens, tokens_total=val + train_tokens)
    manifest["datasets"].append(entry)
    tokenizer = json.loads(json.dumps(manifest["tokenizers"][0]))
    tokenizer.update(
        name=f"sp_bpe_{VOCAB_SIZE}_caseops", text_transform="lossless_caps_caseops_v1",
        model_path=f"tokenizers/{CASEOPS_TOKENIZER}.model", vocab_path=f"tokenizers/{CASEOPS_TOKENIZER}.vocab",
    )
    manifest["tokenizers"].append(tokenizer)
    return tokens


@dataclass
class HubStub:
    """Serve `root` as dataset repo `repo_id` at `self.url` while the context is open."""

    root: Path
    repo_id: str = REPO_ID
    commit: str = COMMIT
    requests: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def gets(self) -> int:
        """GET requests that returned content (200 or 206)."""
        return sum(1 for method, _, status in self.requests if method == "GET" and status in (200, 206))

    def __enter__(self) -> HubStub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-stub", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def locate(self, url_path: str) -> tuple[Path | None, str]:
        """The file a resolve URL names (None if there is none) and the repo path asked for."""
        prefix = f"/datasets/{self.repo_id}/resolve/"
        path = urlsplit(url_path).path
        if not path.startswith(prefix):
            return None, path
        revision, _, relative = path[len(prefix) :].partition("/")
        relative = unquote(relative)
        if unquote(revision) not in ("main", self.commit) or ".." in relative.split("/"):
            return None, relative
        file = self.root / relative
        return (file if file.is_file() else None), relative


def _handler_for(stub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return None

        def _answer(self, send_body: bool) -> None:
            file, relative = stub.locate(self.path)
            if file is None:
                stub.requests.append((self.command, relative, 404))
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", stub.commit)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = file.read_bytes()
            start, status = 0, 200
            ranges = self.headers.get("Range", "")
            if ranges.startswith("bytes=") and ranges[6:].split("-")[0].isdigit():
                start, status = int(ranges[6:].split("-")[0]), 206
            body = data[start:]
            stub.requests.append((self.command, relative, status))
            self.send_response(status)
            self.send_header("X-Repo-Commit", stub.commit)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

    return Handler
