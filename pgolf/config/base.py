"""Strict pydantic base model and one-line rendering of validation errors.

Every params section is a `Section` (``extra="forbid"``, frozen). Errors are rendered as
``<key.path>: <what is allowed>, got <value>`` so a user can fix params.yaml without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from pgolf.errors import ParamsError


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_silent_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        """`true` is not a count and "250" is not an integer: refuse what lax mode would coerce.

        Numeric strings stay accepted for float fields only (PyYAML reads `3e-4` as a string).
        """
        kinds = _annotation_kinds(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
            raise ValueError("must be a number, not true/false")
        if isinstance(value, str) and int in kinds and float not in kinds and str not in kinds:
            raise ValueError("must be an integer, not a string")
        return value


def _annotation_kinds(annotation: Any) -> set:
    """The plain types an annotation admits (`int | None` -> {int, NoneType})."""
    args = get_args(annotation)
    if not args:
        return {annotation}
    return set().union(*(_annotation_kinds(a) for a in args))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(model: type[BaseModel] | None, loc: tuple) -> list[str] | None:
    """Walk `loc` (minus its last element) through nested models; return the allowed keys there."""
    current: Any = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str):
            return None
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        current = field.annotation
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def describe_error(err: dict, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One readable line for one pydantic error dict."""
    loc = tuple(err.get("loc", ()))
    path = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "(root)"
    kind = err.get("type", "")
    ctx = err.get("ctx", {}) or {}
    got = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: required key is missing"
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        bound = next(iter(ctx.values()), "?")
        return f"{path}: must be {bounds[kind]} {bound}, got {_short(got)}"
    if kind == "literal_error":
        return f"{path}: must be {ctx.get('expected', 'one of the allowed values')}, got {_short(got)}"
    message = str(err.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    message = message[0].lower() + message[1:] if message else message
    return f"{path}: {message}, got {_short(got)}"


def format_validation_error(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """All errors of `exc`, one line each, key paths prefixed with the section name."""
    return "\n".join(describe_error(e, prefix, model) for e in exc.errors())


def validate_section(model: type[Section], data: Any, prefix: str) -> Section:
    """Validate `data` against `model`; raise ParamsError with one line per problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{prefix}: must be a mapping of keys to values, got {_short(data)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(format_validation_error(exc, prefix, model)) from None


DEFAULT_PARAMS_PATH = Path("params.yaml")


def known_name(value: str, registry: dict) -> str:
    """`value` if it names an entry of `registry` (a validator's check for registry-selected code)."""
    if value not in registry:
        raise ValueError(f"must be one of {', '.join(map(repr, registry))}")
    return value


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


def load_section_as(model: type[Section], name: str, path: str | Path = DEFAULT_PARAMS_PATH) -> Section:
    """Validate section `name` of the params file with `model`; a missing section takes every default."""
    return validate_section(model, read_params_file(path).get(name), name)
