"""Profiles: named, documented sets of params overrides kept under `profiles/`.

A profile is a YAML file whose top-level keys are params sections and whose leaves override the
values in params.yaml (nested mappings merge; lists and scalars replace). Its leading comment block
is its documentation. `apply_profile` edits params.yaml in place line by line
(`pgolf.yamledit`): only the lines of values that change are rewritten; comments, flow lists,
`null`s and key order stay as they are. It writes nothing unless the merged result validates, the
edit re-parses to exactly the merged mapping, and no DVC command is running in the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pgolf.config.sections import SECTIONS, validate_section
from pgolf.dvclock import refuse_if_busy
from pgolf.errors import ParamsError
from pgolf.io import write_bytes_atomic
from pgolf.yamledit import edit_yaml

PROFILES_DIR = Path("profiles")


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    description: str
    overrides: dict[str, Any]


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
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: a profile must be a mapping of params sections")
    for key in data:
        if key not in SECTIONS:
            raise ParamsError(f"{path}: {key}: unknown section (known: {', '.join(SECTIONS)})")
    return Profile(name=name, path=path, description=_description(text), overrides=data)


def list_profiles(directory: str | Path = PROFILES_DIR) -> list[Profile]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [load_profile(p.stem, directory) for p in sorted(directory.glob("*.yaml"))]


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


def apply_profile(
    name: str, params_path: str | Path = "params.yaml", directory: str | Path = PROFILES_DIR
) -> tuple[Profile, list[str]]:
    """Merge profile `name` into params.yaml; returns the profile and the dotted keys it changed.

    Validates every merged section and checks that no DVC command is running before writing;
    on any failure the file is left untouched.
    """
    profile = load_profile(name, directory)
    params_path = Path(params_path)
    refuse_if_busy(params_path, "changed")
    try:
        text = params_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{params_path}: file not found") from None
    try:
        current = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{params_path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    merged = merge(current, profile.overrides)
    problems = []
    for section, model in SECTIONS.items():
        try:
            validate_section(model, merged.get(section), section)
        except ParamsError as exc:
            problems.append(str(exc))
    if problems:
        raise ParamsError(f"profile {name!r} does not validate:\n" + "\n".join(problems))
    new_text, changed = edit_yaml(text, profile.overrides, str(params_path))
    if changed:
        write_bytes_atomic(params_path, new_text.encode("utf-8"))
    return profile, changed
