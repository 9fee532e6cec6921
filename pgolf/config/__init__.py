"""params.yaml: one validated section per pipeline stage.

`SECTIONS` maps each top-level key of params.yaml to its pydantic model. A stage validates only
its own section (`load_section`); `pgolf params check` validates the whole file (`load_params`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pgolf.config.aggregate import AggregateParams
from pgolf.config.base import Section, validate_section
from pgolf.config.data import AuditParams, ExportParams, FetchParams, TokenizerParams
from pgolf.config.train import TrainParams
from pgolf.config.eval import EvalSlidingParams, EvalTTTParams
from pgolf.config.calibrate import CalibrateParams
from pgolf.config.pack import PackParams
from pgolf.config.quantize import QuantizeParams
from pgolf.errors import ParamsError

DEFAULT_PARAMS_PATH = Path("params.yaml")

SECTIONS: dict[str, type[Section]] = {
    "fetch": FetchParams,
    "tokenizer": TokenizerParams,
    "export": ExportParams,
    "audit": AuditParams,
    "train": TrainParams,
    "calibrate": CalibrateParams,
    "quantize": QuantizeParams,
    "pack": PackParams,
    "eval_sliding": EvalSlidingParams,
    "eval_ttt": EvalTTTParams,
    "aggregate": AggregateParams,
}


def read_params_file(path: str | Path = DEFAULT_PARAMS_PATH) -> dict[str, Any]:
    """The raw mapping in params.yaml; ParamsError if it is missing or not a YAML mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
    return data


def load_section(name: str, path: str | Path = DEFAULT_PARAMS_PATH) -> Section:
    """Validate and return one section; a missing section takes every default."""
    if name not in SECTIONS:
        raise ParamsError(f"{name}: no such params section (known: {', '.join(SECTIONS)})")
    return validate_section(SECTIONS[name], read_params_file(path).get(name), name)


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> dict[str, Section]:
    """Validate every section of the file; all problems are reported together, one per line."""
    data = read_params_file(path)
    problems = [
        f"{key}: unknown section (known: {', '.join(SECTIONS)})" for key in data if key not in SECTIONS
    ]
    sections: dict[str, Section] = {}
    for name, model in SECTIONS.items():
        try:
            sections[name] = validate_section(model, data.get(name), name)
        except ParamsError as exc:
            problems.append(str(exc))
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
