"""Change values in a YAML file by editing only their lines: comments, flow lists, `null`s, quoting
and key order everywhere else stay byte for byte.

`edit_yaml(text, overrides)` deep-merges `overrides` (mappings merge; anything else replaces) into
the document the way `pgolf.profiles.merge` does, but as text edits: a changed scalar is replaced
in place on its line (its comment kept, at the same column when it fits); a change inside an
inline map `{k: v}` rewrites that one map; a missing key is inserted at the end of its parent
block. The result is parsed again and must equal the intended merged mapping exactly (types, key
order); anything the editor cannot do safely raises EditError with one line naming the key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from pgolf.errors import PgolfError

MAX_WIDTH = 100
_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.\-]*)[ \t]*:(?=[ \t]|$)")
_PLAIN_START = set("-?:,[]{}#&*!|>'\"%@`")


class EditError(PgolfError):
    """The file cannot be edited safely line by line (the message names the key)."""


# ---------------------------------------------------------------- values -> YAML text


def same(a: Any, b: Any) -> bool:
    """Equality that tells 1 from 1.0 and True from 1, and mappings' key order apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:  # YAML 1.1 floats need a dot: 1e-08 would be a string
        mantissa += ".0"
    return f"{mantissa}e{exponent}" if exponent else mantissa


def _string(value: str, flow: bool) -> str:
    plain = (
        value
        and value == value.strip()
        and value[0] not in _PLAIN_START
        and ": " not in value
        and " #" not in value
        and "\n" not in value
        and not (flow and any(c in value for c in ",[]{}"))
    )
    if plain:
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def format_value(value: Any, flow: bool = False) -> str:
    """One-line YAML for a value: scalars plain, lists `[a, b]`, mappings `{k: v}`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value, flow)
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v, True) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_string(str(k), True)}: {format_value(v, True)}" for k, v in value.items()) + "}"
    raise EditError(f"cannot write a value of type {type(value).__name__}")


def render_block(key: str, value: Any, indent: int, width: int = MAX_WIDTH) -> list[str]:
    """`key: value` at `indent`; a mapping as a block, a too-long list as a block sequence."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        return [f"{pad}{key}:"] + [line for k, v in value.items() for line in render_block(str(k), v, indent + 2, width)]
    line = f"{pad}{key}: {format_value(value)}"
    if len(line) > width and isinstance(value, list) and value:
        return [f"{pad}{key}:"] + [f"{pad}  - {format_value(item, True)}" for item in value]
    return [line]


# ---------------------------------------------------------------- the line index


def split_comment(text: str) -> tuple[str, str]:
    """`value  # comment` -> (value, '# comment'); a `#` inside quotes or glued to a word is not one."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"" and (i == 0 or text[i - 1] in " \t[{,:"):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i:]
    return text.rstrip(), ""


@dataclass
class Entry:
    path: tuple[str, ...]
    line: int  # index of the `key:` line
    indent: int
    value: str  # the value's text on the key line ('' for a block below)
    value_col: int  # column where a value starts (or would start)
    comment: str
    comment_col: int
    end: int  # one past the last line that belongs to the entry


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_item(line: str) -> bool:
    stripped = line.lstrip(" ")
    return stripped == "-" or stripped.startswith("- ")


def index_lines(lines: list[str], where: str) -> dict[tuple[str, ...], Entry]:
    """Every block-mapping key of the document, by path; EditError on what this editor does not read."""
    entries: dict[tuple[str, ...], Entry] = {}
    stack: list[Entry] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not _content(line):
            i += 1
            continue
        if "\t" in line[: _indent(line) + 1]:
            raise EditError(f"{where}:{i + 1}: tab indentation")
        if line.startswith(("---", "...", "%")):
            raise EditError(f"{where}:{i + 1}: multi-document or directive lines")
        indent = _indent(line)
        while stack and stack[-1].indent >= indent and not (stack[-1].indent == indent and _is_item(line)):
            stack.pop()
        if _is_item(line):  # a block sequence item: skip it and its continuation lines
            i = _block_end(lines, i, indent, items=False)
            continue
        match = _KEY.match(line, indent)
        if not match:
            raise EditError(f"{where}:{i + 1}: not a plain `key: value` line: {line.strip()[:40]!r}")
        rest_col = match.end()
        value, comment = split_comment(line[rest_col:])
        value_col = rest_col + (len(line[rest_col:]) - len(line[rest_col:].lstrip(" ")) if value else 1)
        comment_col = line.index(comment, rest_col) if comment else len(line)
        path = tuple(e.path[-1] for e in stack) + (match.group(1),)
        if path in entries:
            raise EditError(f"{where}:{i + 1}: {'.'.join(path)}: duplicate key")
        end = _block_end(lines, i, indent, items=not value)
        entry = Entry(path, i, indent, value.strip(), value_col, comment, comment_col, end)
        entries[path] = entry
        if value:
            i = end  # continuation lines of a multi-line value are not keys
        else:
            stack.append(entry)
            i += 1
    return entries


def _block_end(lines: list[str], start: int, indent: int, items: bool) -> int:
    """One past the last content line below `start` that is deeper (or, with items, a `- ` at `indent`)."""
    end = start + 1
    for j in range(start + 1, len(lines)):
        if not _content(lines[j]):
            continue
        deeper = _indent(lines[j]) > indent or (items and _indent(lines[j]) == indent and _is_item(lines[j]))
        if not deeper:
            break
        end = j + 1
    return end


# ---------------------------------------------------------------- inline maps


def _split_flow(body: str) -> list[str]:
    """Top-level comma-separated parts of a flow collection's inside."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(body):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    if body[start:].strip():
        parts.append(body[start:])
    return [p.strip() for p in parts]


def edit_flow_map(text: str, path: tuple[str, ...], value: Any, where: str) -> str:
    """Set `path` inside the inline map `text` (`{a: 1, b: {c: 2}}`), keeping the other entries' text."""
    if not (text.startswith("{") and text.endswith("}")):
        raise EditError(f"{where}: not an inline map")
    items = []
    for part in _split_flow(text[1:-1]):
        key, sep, val = part.partition(":")
        if not sep:
            raise EditError(f"{where}: inline map entry {part!r} has no `key: value`")
        items.append([key.strip(), val.strip()])
    for item in items:
        if yaml.safe_load(item[0]) == path[0]:
            if len(path) == 1:
                item[1] = format_value(value, True)
            else:
                item[1] = edit_flow_map(item[1], path[1:], value, where)
            break
    else:
        for key in reversed(path[1:]):
            value = {key: value}
        items.append([_string(path[0], True), format_value(value, True)])
    return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"


# ---------------------------------------------------------------- edits


def _with_comment(line: str, comment: str, comment_col: int) -> str:
    if not comment:
        return line
    return line + " " * max(1, comment_col - len(line)) + comment


def _set(lines: list[str], entries: dict, path: tuple[str, ...], value: Any, where: str) -> list[str]:
    dotted = ".".join(path)
    prefix = next((path[:n] for n in range(len(path), 0, -1) if path[:n] in entries), None)
    if prefix is None:  # a new top-level section: appended at the end of the file
        tail = lines[:]
        while tail and not tail[-1].strip():
            tail.pop()
        return tail + [""] + render_block(path[0], _nest(path[1:], value), 0)
    entry = entries[prefix]
    pad = " " * entry.indent
    key = prefix[-1]
    if prefix == path:
        if entry.value and entry.end == entry.line + 1:  # a one-line value: replace it in place
            head = lines[entry.line][: entry.value_col] if entry.value else f"{pad}{key}: "
            first = render_block(key, value, entry.indent)
            if len(first) == 1:
                return _replace(lines, entry, [_with_comment(head + format_value(value), entry.comment, entry.comment_col)])
        block = render_block(key, value, entry.indent)
        if not entry.value and isinstance(value, list) and entry.end > entry.line + 1 and value:
            item_pad = " " * _indent(lines[entry.end - 1]) if _is_item(lines[entry.end - 1]) else pad + "  "
            block = [f"{pad}{key}:"] + [f"{item_pad}- {format_value(v, True)}" for v in value]
        block[0] = _with_comment(block[0], entry.comment, entry.comment_col)
        return _replace(lines, entry, block)
    rest = path[len(prefix):]
    if entry.value:
        if entry.end != entry.line + 1 or not entry.value.startswith("{"):
            raise EditError(f"{where}: {dotted}: its parent {'.'.join(prefix)} is not a one-line inline map")
        new = edit_flow_map(entry.value, rest, value, f"{where}: {dotted}")
        line = lines[entry.line][: entry.value_col] + new
        return _replace(lines, entry, [_with_comment(line, entry.comment, entry.comment_col)])
    children = [e for e in entries.values() if e.path[:-1] == prefix]
    indent = children[0].indent if children else entry.indent + 2
    if not children and entry.end > entry.line + 1:
        raise EditError(f"{where}: {dotted}: {'.'.join(prefix)} holds a list, not a mapping")
    new = render_block(rest[0], _nest(rest[1:], value), indent)
    return lines[: entry.end] + new + lines[entry.end :]


def _nest(keys: tuple[str, ...], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


def _replace(lines: list[str], entry: Entry, new: list[str]) -> list[str]:
    return lines[: entry.line] + new + lines[entry.end :]


def changed_leaves(base: Any, overrides: dict, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, value) of every override that changes `base`, descending into mappings both have."""
    out = []
    for key, value in overrides.items():
        old = base.get(key) if isinstance(base, dict) else None
        if isinstance(value, dict) and isinstance(old, dict):
            out += changed_leaves(old, value, path + (key,))
        elif not (isinstance(base, dict) and key in base and same(old, value)):
            out.append((path + (key,), value))
    return out


def _merged(base: Any, overrides: Any) -> Any:
    """A fresh deep merge (no containers shared with the inputs)."""
    if not isinstance(base, dict) or not isinstance(overrides, dict):
        return _copy(overrides)
    out = {k: _copy(v) for k, v in base.items()}
    for key, value in overrides.items():
        out[key] = _merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else _copy(value)
    return out


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _first_difference(a: Any, b: Any, path: tuple[str, ...] = ()) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return ".".join(path) or "(top level)"
        for key in a:
            if not same(a[key], b[key]):
                return _first_difference(a[key], b[key], path + (str(key),))
    return ".".join(path) or "(top level)"


def edit_yaml(text: str, overrides: dict, where: str = "params.yaml") -> tuple[str, list[str]]:
    """(new text, dotted keys changed). EditError if the edit cannot be made and verified line by line."""
    try:
        base = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise EditError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(base, dict):
        raise EditError(f"{where}: the document is not a mapping")
    changes = changed_leaves(base, overrides)
    if not changes:
        return text, []
    lines = text.splitlines()
    expected = _copy(base)
    for path, value in changes:  # one edit at a time, each checked, so a refusal names its key
        lines = _set(lines, index_lines(lines, where), path, value, where)
        node = expected
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = _copy(value)
        if not same(_parse("\n".join(lines)), expected):
            raise EditError(f"{where}: cannot edit {'.'.join(path)} safely line by line (anchors, aliases or "
                            "multi-line values around it?); edit it by hand")
    new_text = "\n".join(lines) + ("\n" if text.endswith("\n") or not text else "")
    result = _parse(new_text)
    if not same(result, _merged(base, overrides)):
        raise EditError(f"{where}: cannot edit {_first_difference(result, _merged(base, overrides))} safely line by line; "
                        "edit it by hand")
    return new_text, [".".join(p) for p, _ in changes]


def _parse(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None
