"""The common shell of every stage script: validate params first, run, map failures to exit codes.

Exit codes: 0 done; 1 a PgolfError (one line on stderr, outputs untouched or removed);
2 bad params (one line per problem naming the key path; nothing is read or written);
130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from pgolf.config import load_section
from pgolf.errors import ParamsError, PgolfError

EXIT_FAILED = 1
EXIT_BAD_PARAMS = 2
EXIT_INTERRUPTED = 130


def setup_logging(level: int = logging.INFO) -> None:
    """Greppable `logger: key: value` lines on stderr."""
    logging.basicConfig(level=level, format="%(name)s: %(message)s", stream=sys.stderr, force=True)


def run_stage(
    name: str,
    body: Callable[..., None],
    also: tuple[str, ...] = (),
    params_path: str | Path = "params.yaml",
    own_section: bool = True,
) -> NoReturn:
    """Validate section `name` (and the sections in `also`), then call `body(params, *also_params)`.

    A stage with no params of its own passes `own_section=False`: then `body(*also_params)`.
    Exits 2 on bad params before anything is read or written, 1 on a PgolfError, 0 when done.
    """
    setup_logging()
    names = (name, *also) if own_section else also
    try:
        sections = [load_section(section, params_path) for section in names]
    except ParamsError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_BAD_PARAMS)
    try:
        body(*sections)
    except PgolfError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0)
