"""Profiles: named, documented sets of params overrides kept under `profiles/`.

A profile is a YAML file whose top-level keys are params sections and whose leaves override the
values in params.yaml (nested mappings merge; lists and scalars replace). Its leading comment block
is its documentation. `apply_profile` rewrites params.yaml in place, keeping its comments and key
order, and refuses to write anything unless the merged result validates.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from pgolf.config import SECTIONS, validate_section
from pgolf.errors import ParamsError
from pgolf.io import write_bytes_atomic

PROFILES_DIR = Path("profiles")


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    description: str
    overrides: dict[str, Any]


def _yaml() -> YAML:
    yaml = YAML()  # round-trip mode: comments and key order survive
    yaml.preserve_quotes = True
    yaml.width = 100
    return yaml


def _description(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(line for line in lines if line)


def load_profile(name: str, directory: str | Path = PROFILES_DIR) -> Profile:
    """Read `directory/<name>.yaml`; ParamsError if it is missing or not a mapping of sections."""
    directory = Path(directory)
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.name for p in list_profiles(directory)) or "none"
        raise ParamsError(f"profile {name!r}: no file {path} (known: {known})")
    text = path.read_text(encoding="utf-8")
    data = _yaml().load(text) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: a profile must be a mapping of params sections")
    for key in data:
        if key not in SECTIONS:
            raise ParamsError(f"{path}: {key}: unknown section (known: {', '.join(SECTIONS)})")
    return Profile(name=name, path=path, description=_description(text), overrides=_plain(data))


def list_profiles(directory: str | Path = PROFILES_DIR) -> list[Profile]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [load_profile(p.stem, directory) for p in sorted(directory.glob("*.yaml"))]


def _plain(node: Any) -> Any:
    """ruamel's commented containers -> plain dicts and lists."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def merge(base: Any, overrides: Any) -> Any:
    """Deep-merge `overrides` into `base` in place (mappings merge; anything else replaces)."""
    if not isinstance(base, dict) or not isinstance(overrides, dict):
        return overrides
    for key, value in overrides.items():
        if key in base and isinstance(base[key], dict) and isinstance(value, dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def apply_profile(name: str, params_path: str | Path = "params.yaml", directory: str | Path = PROFILES_DIR) -> Profile:
    """Merge profile `name` into params.yaml; validate every section before writing anything."""
    profile = load_profile(name, directory)
    params_path = Path(params_path)
    yaml = _yaml()
    try:
        document = yaml.load(params_path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{params_path}: file not found") from None
    merge(document, profile.overrides)
    merged = _plain(document)
    problems = []
    for section, model in SECTIONS.items():
        try:
            validate_section(model, merged.get(section), section)
        except ParamsError as exc:
            problems.append(str(exc))
    if problems:
        raise ParamsError(f"profile {name!r} does not validate:\n" + "\n".join(problems))
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    write_bytes_atomic(params_path, buffer.getvalue().encode("utf-8"))
    return profile
