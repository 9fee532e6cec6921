"""bytes_code: what the code of a submission costs under the 16,000,000-byte cap.

Definition (pgolf's): the code is the artifact runtime, i.e. the pgolf modules that loading and
evaluating an artifact imports: the import closure of the entry modules in `pack.code_modules`
(default `pgolf.runtime`), read from source by `pgolf.imports` (a test checks it equals what a
fresh interpreter imports when it loads and scores an artifact). Files are taken in sorted path
order; each contributes the line ``# file: <path>\\n``, its bytes and a newline; the concatenation
is compressed with raw LZMA2 at preset 9 extreme (`pgolf.pack.codecs.compress(..., "lzma", 9)`),
and bytes_code is the compressed length. The tokenizer model file is not counted (as in the
challenge).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import ArtifactError
from pgolf.imports import closure_files
from pgolf.pack.codecs import compress

CODE_LZMA_PRESET = 9


@dataclass(frozen=True)
class CodeBytes:
    files: tuple[str, ...]
    bytes_raw: int
    bytes_code: int


def code_bundle(files: list[str], root: str | Path) -> bytes:
    root = Path(root)
    return b"".join(f"# file: {name}\n".encode() + (root / name).read_bytes() + b"\n" for name in files)


def measure_code_bytes(entries: list[str], root: str | Path) -> CodeBytes:
    """bytes_code of the import closure of `entries` under `root` (see the module docstring)."""
    try:
        files = sorted(closure_files(entries, root))
    except ValueError as exc:
        raise ArtifactError(f"pack.code_modules: {exc}") from None
    bundle = code_bundle(files, root)
    return CodeBytes(tuple(files), len(bundle), len(compress(bundle, "lzma", CODE_LZMA_PRESET)))
