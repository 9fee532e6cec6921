"""Claims that match the run: what a stage's numbers were made with (issue 16; records whose README
claimed what their launch switched off, #2135, and records no one could rerun, #1334, #86).

Where each field goes. The metrics files (metrics/<stage>.json) are DVC outputs committed in git,
fixed bit for bit by a seed and compared by `dvc metrics diff`; they carry, under `provenance`,
what the numbers depend on and what stays put from one commit to the next: the effective
configuration's hash (sha256 of the canonical JSON of each validated params section the stage used,
and of all of them), the pgolf, Python, torch, CUDA and driver versions, the device kind and count,
and the data fingerprints (sha256 of the shards' manifest, of each shard read and of the tokenizer
model). The git commit and whether the tree was dirty change on every commit without the numbers
changing: in a metrics file they would make every file differ on every commit (and every committed
file stale at once). They go to the timing sidecar (metrics/timing/<stage>.json, ignored by git, see
`pgolf.io.timing_path`) under the same key, beside the wall-clock figures of the same run.

Nothing is read from environment variables: versions come from the imported packages, the commit
from `git` run in the checkout that holds this package, the driver from `nvidia-smi`.
`pgolf provenance diff A B` compares two metrics directories or git revisions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pgolf
from pgolf.data.shards import SHARDS_MANIFEST, SPLITS, list_shards

KEY = "provenance"  # the key in a metrics file and in its timing sidecar
CODE_PATHS = ("pgolf", "stages", "pyproject.toml")  # what "dirty" looks at: the code that ran, not its outputs
CHUNK = 1 << 22
HASH_THREADS = 8  # shards hash in parallel (hashlib releases the GIL): ~16 GB of official shards is disk-bound


@dataclass(frozen=True)
class Provenance:
    stable: dict[str, Any]  # into the metrics file
    volatile: dict[str, Any]  # into the timing sidecar


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, no NaN: the same configuration always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _plain(section: Any) -> Any:
    return section.model_dump(mode="json") if hasattr(section, "model_dump") else section


def config_hashes(sections: Mapping[str, Any]) -> dict[str, Any]:
    """{"config_sha256": of all sections, "config": {name: sha256 of that section}}; each section a
    validated params model (or its plain dict)."""
    plain = {name: _plain(section) for name, section in sections.items()}
    return {
        "config_sha256": hashlib.sha256(canonical_json(plain)).hexdigest(),
        "config": {name: hashlib.sha256(canonical_json(value)).hexdigest() for name, value in sorted(plain.items())},
    }


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_all(paths: list[Path]) -> list[str]:
    if len(paths) < 2:
        return [sha256_file(p) for p in paths]
    with ThreadPoolExecutor(min(HASH_THREADS, len(paths))) as pool:
        return list(pool.map(sha256_file, paths))


def shard_files(shards_dir: str | Path, splits: Iterable[str] = SPLITS) -> list[Path]:
    """The shard files of `splits` in a shards directory, in list_shards order."""
    return [path for split in splits for path in list_shards(shards_dir, split)]


def data_fingerprint(shards: Iterable[str | Path], manifest: str | Path | None = None, tokenizer: str | Path | None = None) -> dict[str, Any]:
    """sha256 of the manifest (None when it does not exist), of each shard by file name, and of the
    tokenizer model when given. The manifest defaults to the one beside the first shard."""
    shards = [Path(p) for p in shards]
    if manifest is None and shards:
        manifest = shards[0].parent / SHARDS_MANIFEST
    out: dict[str, Any] = {
        "manifest_sha256": sha256_file(manifest) if manifest is not None and Path(manifest).is_file() else None,
        "shards_sha256": dict(zip((p.name for p in shards), _hash_all(shards))),
    }
    if tokenizer is not None:
        out["tokenizer_sha256"] = sha256_file(tokenizer)
    return out


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    """stdout of a command, stripped; None when it cannot run or fails."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(root: str | Path | None = None) -> dict[str, Any]:
    """{"git_commit", "git_dirty"} of the checkout holding this package (None, None outside git).
    Dirty: uncommitted or untracked changes under CODE_PATHS (outputs such as dvc.lock do not count)."""
    root = Path(root) if root is not None else Path(pgolf.__file__).resolve().parent.parent
    commit = _run(["git", "rev-parse", "HEAD"], root)
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _run(["git", "status", "--porcelain", "--", *CODE_PATHS], root)
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def environment(device: Any = None, count: int = 1) -> dict[str, Any]:
    """Versions and the device a stage ran on (`device` a torch.device or its name). Without a device
    (a stage that runs no model, e.g. the audit) torch is not imported: its version comes from the
    package metadata, CUDA and driver are None and the device is the CPU."""
    if device is None:
        return {**_versions(_installed("torch"), None, None), "device": {"kind": "cpu", "count": count}}
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) if cuda else None
    kind = torch.cuda.get_device_name(device) if cuda else device.type
    return {**_versions(torch.__version__, torch.version.cuda, driver.splitlines()[0].strip() if driver else None),
            "device": {"kind": kind, "count": count}}


def _versions(torch_version: str | None, cuda: str | None, driver: str | None) -> dict[str, Any]:
    return {"pgolf": pgolf.__version__, "python": platform.python_version(), "torch": torch_version, "cuda": cuda, "driver": driver}


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def stage_provenance(sections: Mapping[str, Any], data: dict[str, Any] | None = None, device: Any = None, count: int = 1,
                     root: str | Path | None = None) -> Provenance:
    """The provenance of one stage: its params sections, data fingerprints (or None), device and count."""
    stable = {**config_hashes(sections), **environment(device, count), "data": data}
    return Provenance(stable, git_state(root))


# ------------------------------------------------------------------------ diff


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}; a non-dict is one leaf."""
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, Mapping) and value else {name: value})
    return out


def diff(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines `<file>: <field>: <a> -> <b>` for each provenance field that differs between two runs
    ({file name: provenance}); a field on one side only shows `-` on the other."""
    lines = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            lines.append(f"{name}: only in {'A' if name in a else 'B'}")
            continue
        left, right = flatten(a[name]), flatten(b[name])
        for key in sorted(set(left) | set(right)):
            if (key in left) != (key in right) or left.get(key) != right.get(key):
                lines.append(f"{name}: {key}: {_show(left, key)} -> {_show(right, key)}")
    return lines


def _show(values: Mapping[str, Any], key: str) -> str:
    return "-" if key not in values else json.dumps(values[key], ensure_ascii=False)


def _merged(metrics: Any, timing: Any) -> dict[str, Any] | None:
    """A file's provenance: the metrics file's stable part and the sidecar's volatile part."""
    stable = metrics.get(KEY) if isinstance(metrics, dict) else None
    volatile = timing.get(KEY) if isinstance(timing, dict) else None
    if not isinstance(stable, dict) and not isinstance(volatile, dict):
        return None
    return {**(stable if isinstance(stable, dict) else {}), **(volatile if isinstance(volatile, dict) else {})}


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None


def read_directory(directory: str | Path) -> dict[str, dict[str, Any]]:
    """{file name: provenance} of the metrics files in a directory (sidecars under timing/)."""
    directory, out = Path(directory), {}
    for path in sorted(directory.glob("*.json")):
        sidecar = directory / "timing" / path.name
        merged = _merged(_json(path.read_text(encoding="utf-8")), _json(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else None)
        if merged is not None:
            out[path.name] = merged
    return out


def read_revision(revision: str, repo: str | Path = ".", metrics: str = "metrics") -> dict[str, dict[str, Any]]:
    """{file name: provenance} of the metrics files committed at a git revision (no sidecars: git ignores them)."""
    listing = _run(["git", "ls-tree", "--name-only", f"{revision}:{metrics}"], Path(repo))
    if listing is None:
        raise ValueError(f"{revision}: not a metrics directory nor a git revision with {metrics}/ in {repo}")
    out = {}
    for name in sorted(n for n in listing.splitlines() if n.endswith(".json")):
        merged = _merged(_json(_run(["git", "show", f"{revision}:{metrics}/{name}"], Path(repo))), None)
        if merged is not None:
            out[name] = merged
    return out


def read_source(source: str, repo: str | Path = ".", metrics: str = "metrics") -> dict[str, dict[str, Any]]:
    """A metrics directory when `source` is one, else a git revision of `repo`."""
    return read_directory(source) if Path(source).is_dir() else read_revision(source, repo, metrics)


def _diff_command(args: argparse.Namespace) -> int:
    try:
        a, b = (read_source(s, args.repo, args.metrics_path) for s in (args.a, args.b))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lines = diff(a, b)
    print("\n".join(lines) if lines else f"no differences ({len(set(a) | set(b))} metrics files with provenance)")
    return 0


def add_provenance_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("provenance", help="what the runs' numbers were made with (metrics/*.json provenance)")
    commands = parser.add_subparsers(dest="provenance_command", required=True)
    diff_parser = commands.add_parser("diff", help="the provenance fields that differ between two runs, one per line")
    diff_parser.add_argument("a", help="a metrics directory or a git revision")
    diff_parser.add_argument("b", help="a metrics directory or a git revision")
    diff_parser.add_argument("--repo", default=".", help="the git repository of revisions (default: .)")
    diff_parser.add_argument("--metrics-path", default="metrics", help="the metrics directory inside a revision (default: metrics)")
    diff_parser.set_defaults(func=_diff_command)
