"""The registry of params sections: each top-level key of params.yaml and its pydantic model.

A stage script validates only its own section, naming its model class directly (so it imports
no other section's code); `pgolf params check` validates the whole file here (`load_params`).
"""

from __future__ import annotations

from pathlib import Path

from pgolf.config.aggregate import AggregateParams
from pgolf.config.base import DEFAULT_PARAMS_PATH, Section, load_section_as, read_params_file, validate_section
from pgolf.config.data import AuditParams, ExportParams, FetchParams, TokenizerParams
from pgolf.config.train import TrainParams
from pgolf.config.eval import EvalSlidingParams, EvalTiltParams, EvalTTTParams
from pgolf.config.calibrate import CalibrateParams
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.config.rd import RDParams
from pgolf.errors import ParamsError

SECTIONS: dict[str, type[Section]] = {
    "fetch": FetchParams,
    "tokenizer": TokenizerParams,
    "export": ExportParams,
    "audit": AuditParams,
    "train": TrainParams,
    "calibrate": CalibrateParams,
    "quantize": QuantizeParams,
    "pack": PackParams,
    "rd": RDParams,
    "eval_sliding": EvalSlidingParams,
    "eval_ttt": EvalTTTParams,
    "eval_tilt": EvalTiltParams,
    "aggregate": AggregateParams,
}


def load_section(name: str, path: str | Path = DEFAULT_PARAMS_PATH) -> Section:
    """Validate and return one section; a missing section takes every default."""
    if name not in SECTIONS:
        raise ParamsError(f"{name}: no such params section (known: {', '.join(SECTIONS)})")
    return load_section_as(SECTIONS[name], name, path)


def load_params(path: str | Path = DEFAULT_PARAMS_PATH, require_all: bool = False) -> dict[str, Section]:
    """Validate every section of the file; all problems are reported together, one per line.

    With `require_all` (the `params` guard stage) every section must be written out: DVC reads
    each stage's params from the file itself, so a missing section would fail there, after DVC
    has deleted that stage's outputs."""
    data = read_params_file(path)
    problems = [
        f"{key}: unknown section (known: {', '.join(SECTIONS)})" for key in data if key not in SECTIONS
    ]
    sections: dict[str, Section] = {}
    for name, model in SECTIONS.items():
        if require_all and name not in data:
            problems.append(f"{name}: section is missing from {path} (`pgolf params show {name}` prints its defaults)")
            continue
        try:
            sections[name] = validate_section(model, data.get(name), name)
        except ParamsError as exc:
            problems.append(str(exc))
    if require_all and not data:
        problems = [f"{path}: no params: the file is empty (section fetch is missing, and every other)"]
    if problems:
        raise ParamsError("\n".join(problems))
    return sections


__all__ = [
    "SECTIONS",
    "AuditParams",
    "ExportParams",
    "FetchParams",
    "ParamsError",
    "Section",
    "TokenizerParams",
    "load_params",
    "load_section",
    "read_params_file",
]
