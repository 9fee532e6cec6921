"""`fetch.source: hf`: the official pre-tokenized shards (and optionally the raw documents) from the hub.

The dataset repo holds, under `remote_root`: `manifest.json`; `datasets/fineweb10B_<variant>/
fineweb_{val,train}_NNNNNN.bin`; the tokenizer files named by the manifest (e.g.
`tokenizers/fineweb_1024_bpe.{model,vocab}`); and `docs_selected.jsonl` with its sidecar
`docs_selected.source_manifest.json`. The manifest is read first: its `datasets` entry for the
variant gives the number of validation shards, the number of training shards available and the
tokenizer's name, whose `tokenizers` entry gives the tokenizer files.

Case-transformed sets (the records' CaseOps export, e.g. repo `romeerp/parameter-golf-caseops-v1`,
variant `sp8192_lossless_caps_caseops_v1_reserved`) also hold, beside each validation shard, its byte
sidecar `fineweb_val_bytes_NNNNNN.bin` (`pgolf.bytetable`); `fetch.val_byte_sidecar` downloads them,
checks each like a shard and requires one count per token of its validation shard. The tokenizer
entry's `text_transform`, when the manifest gives one, is recorded in the fetch summary.

Files go through the hub client's cache (under `fetch.cache_dir`, with its resume and progress
bars), pinned to the commit the manifest came from, and are hard-linked (or copied) into
`out_dir/hub/` with the remote layout below `remote_root`. Every shard's header and size is checked
before the fetch counts as done; a bad shard is also dropped from the client's cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from pgolf.bytetable import sidecar_name
from pgolf.config.data import FetchParams
from pgolf.data.shards import read_header, shard_name
from pgolf.errors import DataError, ShardError

log = logging.getLogger(__name__)

HUB_DIR = "hub"
HF_CACHE = "hf"
MANIFEST = "manifest.json"
DOCS_NAME = "docs_selected.jsonl"
DOCS_SIDECAR = "docs_selected.source_manifest.json"
DATASET_PREFIX = "fineweb10B_"
TOKENIZER_FILE_KEYS = ("model_path", "vocab_path", "path")


@dataclass(frozen=True)
class HubPlan:
    """What to download, as paths relative to `remote_root`, read from the remote manifest."""

    dataset: dict[str, Any]
    shards_dir: str
    val_files: tuple[str, ...]
    train_files: tuple[str, ...]
    tokenizer_files: tuple[str, ...]
    tokenizer_model: str | None
    docs_files: tuple[str, ...]
    sidecar_files: tuple[str, ...] = ()  # the byte sidecar of each validation shard, in order
    text_transform: str | None = None  # as the manifest's tokenizer entry names it (records: lossless_caps_caseops_v1)

    @property
    def files(self) -> tuple[str, ...]:
        return self.docs_files + self.val_files + self.sidecar_files + self.train_files + self.tokenizer_files


def _stat(stats: dict[str, Any], key: str, where: str) -> int:
    value = stats.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataError(f"{where}: stats.{key} must be a non-negative integer, got {value!r}")
    return value


def _relative_file(value: Any, where: str) -> str:
    path = PurePosixPath(value) if isinstance(value, str) and value else None
    if path is None or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        raise DataError(f"{where}: must be a relative path inside the repo, got {value!r}")
    return path.as_posix()


def plan_downloads(manifest: Any, params: FetchParams, where: str) -> HubPlan:
    """Check the remote manifest against `params`; `where` names the manifest in error messages."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("datasets"), list):
        raise DataError(f"{where}: must be a JSON object with a 'datasets' list")
    name = DATASET_PREFIX + params.variant
    datasets = [d for d in manifest["datasets"] if isinstance(d, dict)]
    dataset = next((d for d in datasets if d.get("name") == name), None)
    if dataset is None:
        known = ", ".join(str(d.get("name")) for d in datasets) or "none"
        raise DataError(f"{where}: no dataset {name!r} for fetch.variant={params.variant!r} (available: {known})")
    stats = dataset.get("stats")
    if not isinstance(stats, dict):
        raise DataError(f"{where}: dataset {name!r} has no 'stats' object")
    files_val = _stat(stats, "files_val", f"{where}: {name}")
    files_train = _stat(stats, "files_train", f"{where}: {name}")
    if files_val == 0:
        raise DataError(f"{where}: dataset {name!r} lists no validation shards (stats.files_val = 0)")
    if params.train_shards > files_train:
        raise DataError(
            f"fetch.train_shards: {params.train_shards} requested but {name} on {params.repo_id} has only {files_train}"
        )
    tokenizer_name = dataset.get("tokenizer_name")
    tokenizers = manifest.get("tokenizers") if isinstance(manifest.get("tokenizers"), list) else []
    tokenizer = next((t for t in tokenizers if isinstance(t, dict) and t.get("name") == tokenizer_name), None)
    if tokenizer is None:
        raise DataError(f"{where}: dataset {name!r} names tokenizer {tokenizer_name!r}, which has no 'tokenizers' entry")
    tokenizer_files = tuple(
        _relative_file(tokenizer[key], f"{where}: tokenizer {tokenizer_name!r} {key}")
        for key in TOKENIZER_FILE_KEYS
        if tokenizer.get(key)
    )
    if not tokenizer_files:
        raise DataError(f"{where}: tokenizer {tokenizer_name!r} lists no files ({', '.join(TOKENIZER_FILE_KEYS)})")
    model = tokenizer.get("model_path")
    shards_dir = f"datasets/{name}"
    return HubPlan(
        dataset=dataset,
        shards_dir=shards_dir,
        val_files=tuple(f"{shards_dir}/{shard_name('val', i)}" for i in range(files_val)),
        train_files=tuple(f"{shards_dir}/{shard_name('train', i)}" for i in range(params.train_shards)),
        tokenizer_files=tokenizer_files,
        tokenizer_model=_relative_file(model, where) if model else None,
        docs_files=(DOCS_NAME, DOCS_SIDECAR) if params.with_docs else (),
        sidecar_files=tuple(f"{shards_dir}/{sidecar_name(i)}" for i in range(files_val)) if params.val_byte_sidecar else (),
        text_transform=str(tokenizer["text_transform"]) if tokenizer.get("text_transform") else None,
    )


def _remote(params: FetchParams, relative: str) -> str:
    return f"{params.remote_root}/{relative}" if params.remote_root else relative


def _download(params: FetchParams, relative: str, revision: str, cache_dir: Path) -> Path:
    """One file through the hub client's cache; returns the cache's path of it."""
    from huggingface_hub import hf_hub_download

    remote = PurePosixPath(_remote(params, relative))
    try:
        return Path(
            hf_hub_download(
                params.repo_id,
                remote.name,
                subfolder=remote.parent.as_posix() if remote.parent != PurePosixPath(".") else None,
                repo_type="dataset",
                revision=revision,
                endpoint=params.endpoint,
                cache_dir=cache_dir,
            )
        )
    except Exception as exc:  # the client raises its own, OSError and HTTP-library errors alike
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{params.repo_id}@{revision}: {remote}: download failed ({first_line})") from exc


def _commit_of(cached: Path) -> str | None:
    """The commit a file of the client's cache belongs to (`.../snapshots/<commit>/...`)."""
    parts = cached.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _link(cached: Path, dest: Path) -> None:
    """Hard-link the cached blob to `dest`, or copy it where links are not possible."""
    source = cached.resolve(strict=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _evict(cached: Path) -> None:
    """Drop a bad file from the client's cache so the next fetch downloads it again."""
    blob = cached.resolve()
    cached.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(sidecar, dict):
        raise DataError(f"{path}: must hold a JSON object")
    for key in ("num_docs", "docs_val"):
        value = sidecar.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise DataError(f"{path}: '{key}' must be a non-negative integer, got {value!r}")
    return sidecar


def fetch_hub(params: FetchParams, out_dir: Path) -> dict[str, Any]:
    """Download the manifest, then the planned files, into `out_dir/hub/`; return the fetch summary."""
    cache_dir = Path(params.cache_dir) / HF_CACHE
    hub = out_dir / HUB_DIR
    cached_manifest = _download(params, MANIFEST, params.revision, cache_dir)
    commit = _commit_of(cached_manifest) or params.revision
    _link(cached_manifest, hub / MANIFEST)
    where = f"{params.repo_id}@{commit}:{_remote(params, MANIFEST)}"
    try:
        remote_manifest = json.loads(cached_manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: not valid JSON ({exc})") from None
    plan = plan_downloads(remote_manifest, params, where)
    log.info("commit: %s", commit)
    log.info("files: %d (%d val shards, %d train shards)", len(plan.files), len(plan.val_files), len(plan.train_files))

    cached: dict[str, Path] = {}
    for relative in tqdm(plan.files, desc="fetch", unit="file", disable=None, mininterval=1.0):
        cached[relative] = _download(params, relative, commit, cache_dir)
        _link(cached[relative], hub / relative)

    tokens: dict[str, int] = {}
    for relative in plan.val_files + plan.sidecar_files + plan.train_files:
        try:
            tokens[PurePosixPath(relative).name] = read_header(hub / relative)
        except ShardError as exc:
            _evict(cached[relative])
            detail = str(exc).removeprefix(f"{hub / relative}: ")
            raise ShardError(f"{_remote(params, relative)}: {detail} (dropped from the download cache)") from None
    for shard, sidecar in zip(plan.val_files, plan.sidecar_files):
        counts, expected = tokens[PurePosixPath(sidecar).name], tokens[PurePosixPath(shard).name]
        if counts != expected:
            _evict(cached[sidecar])
            raise ShardError(f"{_remote(params, sidecar)}: {counts} byte counts for the {expected} tokens of {PurePosixPath(shard).name} (dropped from the download cache)")
    tokens_val = sum(tokens[PurePosixPath(r).name] for r in plan.val_files)
    expected_val = plan.dataset["stats"].get("tokens_val")
    if isinstance(expected_val, int) and expected_val != tokens_val:
        raise ShardError(f"{where}: validation shards hold {tokens_val} tokens, the manifest says {expected_val}")

    sidecar = _read_sidecar(hub / DOCS_SIDECAR) if params.with_docs else {}
    return {
        "source": "hf",
        "docs_path": f"{HUB_DIR}/{DOCS_NAME}" if params.with_docs else None,
        "num_docs": sidecar.get("num_docs"),
        "docs_val": sidecar.get("docs_val"),
        "shards_dir": f"{HUB_DIR}/{plan.shards_dir}",
        "tokenizer_model": f"{HUB_DIR}/{plan.tokenizer_model}" if plan.tokenizer_model else None,
        "repo_id": params.repo_id,
        "revision": params.revision,
        "commit": commit,
        "remote_root": params.remote_root,
        "variant": params.variant,
        "dataset": plan.dataset.get("name"),
        "vocab_size": plan.dataset.get("vocab_size"),
        "bos_id": plan.dataset.get("bos_id"),
        "val_shards": len(plan.val_files),
        "train_shards": len(plan.train_files),
        "tokens_val": tokens_val,
        "tokens_train": sum(tokens[PurePosixPath(r).name] for r in plan.train_files),
        "tokens_per_shard": tokens,
        "docs_sidecar": sidecar or None,
        "files": [{"path": r, "bytes": (hub / r).stat().st_size} for r in (MANIFEST, *plan.files)],
        **({"val_byte_sidecar": True} if plan.sidecar_files else {}),
        **({"text_transform": plan.text_transform} if plan.text_transform else {}),
    }
