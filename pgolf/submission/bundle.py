"""The self-contained train_gpt.py of a submission: pgolf's train-to-evaluation modules in one file.

The program is the import closure of `pgolf.submission.entry` (read by `pgolf.imports`, as
bytes_code's closure is), each module's source in a dict, a loader that serves them to `import`
from memory (a `sys.meta_path` finder placed first, so an installed pgolf is never mixed in), the
run's effective params as JSON, and a call of the entry. That source is compressed as the records
wrap theirs (raw LZMA2, preset 9 extreme, base85, then `exec`): the wrapper's length is the code a
submission counts, bytes_code = len(train_gpt.py).
"""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import json
import lzma
import sys
from dataclasses import dataclass
from pathlib import Path

from pgolf.imports import PACKAGE, closure, module_files

ENTRY = "pgolf.submission.entry"
PROGRAM_NAME = "train_gpt.py"
FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

# The program's own text before compression: the loader, then the entry. Modules are registered in
# linecache so tracebacks (and inspect, which torch.compile may call) see their lines.
LOADER = '''import importlib.abc, importlib.util, json, linecache, sys
SOURCES = {sources}
PARAMS = json.loads({params})


class BundleImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the bundled pgolf modules from SOURCES (name -> [is_package, source])."""

    def find_spec(self, name, path=None, target=None):
        if name in SOURCES:
            return importlib.util.spec_from_loader(name, self, is_package=SOURCES[name][0])
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        is_package, source = SOURCES[module.__name__]
        filename = "<bundle>/" + module.__name__.replace(".", "/") + ("/__init__.py" if is_package else ".py")
        module.__file__ = filename
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)


sys.meta_path.insert(0, BundleImporter())
from pgolf.submission.entry import main

sys.exit(main(PARAMS, sys.argv[1:], __file__))
'''


@dataclass(frozen=True)
class Program:
    modules: dict[str, tuple[bool, str]]  # dotted name -> (is a package, source)
    params: dict
    source: str  # the uncompressed program
    text: str  # train_gpt.py: the self-extracting wrapper

    @property
    def bytes_code(self) -> int:
        return len(self.text.encode())


def minify(source: str) -> str:
    """The same code without docstrings and comments (`ast.unparse`), as the records minify theirs."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def bundle_modules(root: str | Path, entry: str = ENTRY, minified: bool = True) -> dict[str, tuple[bool, str]]:
    """The import closure of `entry` under `root`: name -> (is a package, source), minified unless told."""
    files = module_files(root)
    out = {}
    for name in closure([entry], root):
        source = files[name].read_text(encoding="utf-8")
        out[name] = (files[name].name == "__init__.py", minify(source) if minified else source)
    return out


def program_source(modules: dict[str, tuple[bool, str]], params: dict) -> str:
    sources = "{\n" + "".join(f"    {name!r}: [{pkg!r}, {src!r}],\n" for name, (pkg, src) in sorted(modules.items())) + "}"
    return LOADER.format(sources=sources, params=repr(json.dumps(params, sort_keys=True)))


def self_extracting(source: str) -> str:
    """The records' wrapper: exec of the LZMA2-compressed, base85-encoded source."""
    packed = base64.b85encode(lzma.compress(source.encode(), format=lzma.FORMAT_RAW, filters=FILTERS)).decode("ascii")
    return ('import lzma as L,base64 as B\n'
            f'exec(L.decompress(B.b85decode("{packed}"),format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}]))\n')


def extract(text: str) -> str:
    """The source a wrapper made by `self_extracting` runs (for checks and reading)."""
    call = ast.parse(text).body[-1].value.args[0]  # exec(L.decompress(B.b85decode("..."), ...))
    packed = call.args[0].args[0].value
    return lzma.decompress(base64.b85decode(packed), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]).decode()


def program_params(text: str) -> dict:
    """The params a train_gpt.py made by `build_program` embeds."""
    for node in ast.parse(extract(text)).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PARAMS"]:
            return json.loads(node.value.args[0].value)
    raise ValueError("no PARAMS in the program")


def build_program(root: str | Path, params: dict, minified: bool = True) -> Program:
    modules = bundle_modules(root, minified=minified)
    source = program_source(modules, params)
    return Program(modules, params, source, self_extracting(source))


def third_party_imports(sources: list[str]) -> set[str]:
    """Top-level names of the non-stdlib, non-pgolf modules the sources import (anywhere in them)."""
    names: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n != PACKAGE and n not in sys.stdlib_module_names}


def requirements(modules: dict[str, tuple[bool, str]]) -> list[str]:
    """`dist==version` of the installed distribution of each third-party import, sorted; a module
    with no installed distribution is a ValueError naming it."""
    owners = importlib.metadata.packages_distributions()
    pins: set[str] = set()
    for name in sorted(third_party_imports([src for _, src in modules.values()])):
        dists = owners.get(name)
        if not dists:
            raise ValueError(f"{name}: imported by the bundle but no installed distribution provides it")
        pins.update(f"{dist}=={importlib.metadata.version(dist)}" for dist in dists)
    return sorted(pins, key=str.lower)
