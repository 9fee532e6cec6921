"""The static import graph of the `pgolf` package, read from source with `ast` (nothing is run).

An edge A -> B means module A names module B: an `import`/`from ... import` anywhere in A (at
module level or inside a function), or a string constant in A that is exactly a pgolf module's
dotted name (registries that import by name). Importing `pgolf.a.b` also runs the packages
`pgolf` and `pgolf.a`, so those are edges too. Used to derive `bytes_code` (the closure of the
artifact runtime), DVC code deps and the architecture test's walls.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "pgolf"


def module_files(root: str | Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package under `root`."""
    root = Path(root)
    out: dict[str, Path] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every dotted name module `module` imports or names as a string (candidates, unresolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGE + "."):
            names.add(node.value)
    return names


def import_graph(root: str | Path) -> dict[str, set[str]]:
    """Module -> the pgolf modules it imports directly (parent packages included). Cached per state
    of the files (path, size, mtime), so an edited tree is read again."""
    files = module_files(root)
    signature = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values())
    return _graph(str(Path(root).resolve()), signature)


@cache
def _graph(root: str, signature: tuple) -> dict[str, set[str]]:
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        for target in imported_names(path.read_text(encoding="utf-8"), name, path.name == "__init__.py"):
            if target in files:
                edges.add(target)
                edges.update(p for p in _parents(target) if p in files)
        graph[name] = edges - {name}
    return graph


def closure(entries: list[str], root: str | Path) -> list[str]:
    """The entry modules and every pgolf module they import transitively (with their parent
    packages), sorted by name. An unknown entry is a ValueError."""
    return reachable(import_graph(root), entries, str(root))


def reachable(graph: dict[str, set[str]], entries: list[str], where: str = "the graph") -> list[str]:
    """`closure` over a graph already built (one graph for many queries)."""
    todo = []
    for entry in entries:
        if entry not in graph:
            raise ValueError(f"{entry}: not a module of {PACKAGE} under {where}")
        todo.extend([entry, *(p for p in _parents(entry) if p in graph)])
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return sorted(seen)


def closure_files(entries: list[str], root: str | Path) -> list[str]:
    """`closure` as repository-relative POSIX paths."""
    files = module_files(root)
    root = Path(root)
    return [files[name].relative_to(root).as_posix() for name in closure(entries, root)]


def script_imports(script: str | Path, root: str | Path) -> list[str]:
    """The pgolf modules a script outside the package (a stage script) imports, transitively."""
    graph = import_graph(root)
    direct = {n for n in imported_names(Path(script).read_text(encoding="utf-8"), "__main__", False) if n in graph}
    return closure(sorted(direct), root) if direct else []
