"""`pgolf inspect ARTIFACT [--json]` and `pgolf unpack ARTIFACT --out DIR`.

Both fully validate and decode the artifact first; a malformed file exits 1 with one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file

from pgolf.io import atomic_dir, write_json_atomic
from pgolf.pack.artifact import FORMAT_VERSION, PREFIX_BYTES, ParsedArtifact
from pgolf.errors import ArtifactError
from pgolf.pack.load import decode_tensors, load_model_from_artifact, named, parse_artifact_file, quantized_tensors

UNPACKED_TENSORS = "tensors.safetensors"
UNPACKED_HEADER = "header.json"


def describe(path: str | Path, parsed: ParsedArtifact) -> dict:
    """The stream and tensor tables and byte accounting of a validated artifact."""
    header = parsed.header
    by_coder: dict[str, int] = {}
    for stream in header.streams:
        by_coder[stream.coder] = by_coder.get(stream.coder, 0) + stream.length
    return {
        "artifact": str(path),
        "format_version": FORMAT_VERSION,
        "file_bytes": parsed.file_bytes,
        "prefix_bytes": PREFIX_BYTES,
        "header_bytes": parsed.header_bytes,
        "payload_bytes": sum(s.length for s in header.streams),
        "payload_bytes_by_coder": by_coder,
        "model_config": header.model_config_,
        "meta": header.meta,
        "aliases": header.aliases,
        "streams": [{**s.model_dump(), "tensors": len(header.stream_tensors(i))} for i, s in enumerate(header.streams)],
        "tensors": [e.model_dump(exclude_none=True) for e in header.tensors],
    }


def _inspect(args: argparse.Namespace) -> int:
    parsed = parse_artifact_file(args.artifact)
    # A well-formed container is not enough: its config must build the model and its tensors fit it.
    load_model_from_artifact(args.artifact)
    info = describe(args.artifact, parsed)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['artifact']}: {info['file_bytes']} bytes (prefix {info['prefix_bytes']}, header {info['header_bytes']}, payload {info['payload_bytes']}), format v{info['format_version']}")
    for index, stream in enumerate(info["streams"]):
        layout = " column-major" if stream["column"] else ""
        shuffle = f" shuffle {stream['shuffle']}" if stream["shuffle"] > 1 else ""
        print(f"stream {index}: {stream['coder']}{layout}{shuffle}, {stream['tensors']} tensors, {stream['length']} bytes")
        for entry in (e for e in info["tensors"] if e["stream"] == index):
            bits = f"int{entry['bits']}" if "bits" in entry else entry["dtype"]
            shape = "x".join(map(str, entry["shape"])) or "scalar"
            role = entry["role"] + (f" {entry['part']}" if "part" in entry else "")
            print(f"  {entry['name']:<40} {role:<16} {shape:>12} {bits:>8}")
    return 0


def _unpack(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ArtifactError(f"{args.out}: exists and is not an empty directory; refusing to overwrite it")
    args.out = out
    parsed = parse_artifact_file(args.artifact)
    try:
        decoded = decode_tensors(parsed)
        quantized_tensors(parsed, decoded)  # symbols in range, scales finite, extras known
    except ArtifactError as exc:
        raise named(args.artifact, exc) from None
    tensors = {"/".join(filter(None, (role, name, part))): tensor.contiguous() for (name, role, part), tensor in decoded.items()}
    with atomic_dir(args.out) as tmp:
        save_file(tensors, str(Path(tmp) / UNPACKED_TENSORS))
        write_json_atomic(Path(tmp) / UNPACKED_HEADER, describe(args.artifact, parsed))
    print(f"{args.out}: {len(tensors)} tensors ({UNPACKED_TENSORS}: q/<name> int8, scale/<name> float16, extra/<name>/<part> and plain/<name> as stored; {UNPACKED_HEADER})")
    return 0


def add_inspect_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("inspect", help="validate an artifact; print its tensor table and byte accounting")
    parser.add_argument("artifact", help="path of a .pgolf artifact")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON")
    parser.set_defaults(func=_inspect)


def add_unpack_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("unpack", help="write an artifact's tensors as safetensors (integers as integers)")
    parser.add_argument("artifact", help="path of a .pgolf artifact")
    parser.add_argument("--out", required=True, help="output directory")
    parser.set_defaults(func=_unpack)
