"""bytes_code: what the code of a submission costs under the 16,000,000-byte cap.

Definition (pgolf's, documented in the README of the pack stage): the files matched by the
`pack.code_files` globs, relative to the repository root, taken pattern by pattern in the listed
order, files within a pattern in sorted path order, each file once. Each contributes the line
``# file: <path>\\n`` followed by its bytes and a newline; the concatenation is compressed with
raw LZMA2 at preset 9 extreme (`pgolf.pack.codecs.compress(..., "lzma", 9)`), and bytes_code is
the compressed length. Defaults: the model, the artifact decoder (container, codecs, entropy
coder, loader) and the evaluation package; a pattern that matches nothing counts nothing and is
reported in `missing_patterns`. The tokenizer model file is not counted (as in the challenge).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import ArtifactError
from pgolf.pack.codecs import compress

CODE_LZMA_PRESET = 9


@dataclass(frozen=True)
class CodeBytes:
    files: tuple[str, ...]
    missing_patterns: tuple[str, ...]
    bytes_raw: int
    bytes_code: int


def code_files(patterns: list[str], root: str | Path) -> tuple[list[str], list[str]]:
    """(matched repo-relative files in counting order, patterns that matched nothing)."""
    root = Path(root)
    files: list[str] = []
    missing: list[str] = []
    for pattern in patterns:
        matches = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())
        if not matches:
            missing.append(pattern)
        files.extend(m for m in matches if m not in files)
    return files, missing


def code_bundle(files: list[str], root: str | Path) -> bytes:
    root = Path(root)
    return b"".join(f"# file: {name}\n".encode() + (root / name).read_bytes() + b"\n" for name in files)


def measure_code_bytes(patterns: list[str], root: str | Path) -> CodeBytes:
    """bytes_code of the files `patterns` select under `root` (see the module docstring)."""
    files, missing = code_files(patterns, root)
    if not files:
        raise ArtifactError(f"pack.code_files matches no file under {root}: bytes_code would be 0")
    bundle = code_bundle(files, root)
    return CodeBytes(tuple(files), tuple(missing), len(bundle), len(compress(bundle, "lzma", CODE_LZMA_PRESET)))
