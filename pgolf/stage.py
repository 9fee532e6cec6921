"""The common shell of every stage script: validate params first, run, map failures to exit codes.

Exit codes: 0 done; 1 a PgolfError (one line on stderr, outputs untouched or removed), or the
stage's params changed on disk while it ran (its outputs were made with the old values);
2 bad params (one line per problem naming the key path; nothing is read or written);
130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from pgolf.config.base import Section, read_params_file, validate_section
from pgolf.errors import ParamsError, PgolfError

EXIT_FAILED = 1
EXIT_BAD_PARAMS = 2
EXIT_INTERRUPTED = 130


def setup_logging(level: int = logging.INFO) -> None:
    """Greppable `logger: key: value` lines on stderr."""
    logging.basicConfig(level=level, format="%(name)s: %(message)s", stream=sys.stderr, force=True)


def _fail(lines: str, code: int, prefix: str = "error: ") -> NoReturn:
    for line in lines.splitlines():
        print(f"{prefix}{line}", file=sys.stderr)
    sys.exit(code)


def check_unchanged(path: str | Path, names: tuple[str, ...], before: dict) -> None:
    """ParamsError when a section of `names` on disk differs from `before` (read when the stage began)."""
    now = read_params_file(path)
    changed = [name for name in names if now.get(name) != before.get(name)]
    if changed:
        raise ParamsError(
            f"{path}: section {', '.join(changed)} changed while the stage ran; its outputs were made with "
            "the old values and are not recorded (run `dvc repro` again)"
        )


def run_stage(
    sections: dict[str, type[Section]],
    body: Callable[..., object],
    params_path: str | Path = "params.yaml",
    name: str | None = None,
) -> NoReturn:
    """Validate each params section of `sections` (key -> model), then call `body(*validated)` in
    that order. At the end, the sections on disk must still be those the stage read.

    Exits 2 on bad params before anything is read or written, 1 on a PgolfError, 0 when done.
    """
    setup_logging()
    name = name or next(iter(sections), "stage")
    try:
        raw = read_params_file(params_path)  # a missing section takes every default (the `params` guard refuses it)
        validated = [validate_section(model, raw.get(key), key) for key, model in sections.items()]
    except ParamsError as exc:
        _fail(str(exc), EXIT_BAD_PARAMS)
    try:
        body(*validated)
        check_unchanged(params_path, tuple(sections), raw)
    except PgolfError as exc:
        _fail(str(exc), EXIT_FAILED, f"{name}: error: ")
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED, f"{name}: ")
    sys.exit(0)
