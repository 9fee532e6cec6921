"""The architecture's walls as checks over a source tree (the repository, or a copy with a planted
violation): each function returns one line per violation, empty when the walls hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from pgolf.imports import closure, import_graph, module_files, reachable, script_imports

MAX_MODULE_LINES = 400
NO_TRAINING = ("pgolf.quant", "pgolf.pack", "pgolf.eval")  # never import pgolf.train
MODEL = "pgolf.model"  # imports neither training nor distribution
TRAINING = ("pgolf.train", "pgolf.optim")
DISTRIBUTION = ("pgolf.dist", "pgolf.launch", "pgolf.procs")
ENV_READERS = {"pgolf.dist", "pgolf.launch"}  # the only modules that may read the process environment
ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _in(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def import_walls(root: Path) -> list[str]:
    graph = import_graph(root)
    out = []
    for module in sorted(graph):
        reached = reachable(graph, [module])
        if _in(module, NO_TRAINING):
            out += [f"{module} imports training ({m})" for m in reached if _in(m, ("pgolf.train",))]
        if _in(module, (MODEL,)):
            out += [f"{module} imports training or distribution ({m})" for m in reached if _in(m, TRAINING + DISTRIBUTION)]
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def source_walls(root: Path) -> list[str]:
    """The library never names stages/ or dvc.yaml in code (it neither runs nor rewrites them), only
    pgolf.dist and pgolf.launch read the environment, and no module is longer than MAX_MODULE_LINES."""
    out = []
    for name, path in sorted(module_files(root).items()):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + (0 if text.endswith("\n") else 1)
        if lines > MAX_MODULE_LINES:
            out.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES})")
        tree = ast.parse(text)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                if re.search(r"(^|[\s/'\"])stages/|dvc\.yaml", node.value):
                    out.append(f"{name}:{node.lineno}: names stages/ or dvc.yaml ({node.value[:40]!r})")
            if name in ENV_READERS:
                continue
            if isinstance(node, ast.Attribute) and node.attr in ENV_NAMES and isinstance(node.value, ast.Name) and node.value.id == "os":
                out.append(f"{name}:{node.lineno}: reads the process environment (os.{node.attr})")
            if isinstance(node, ast.ImportFrom) and node.module == "os" and any(a.name in ENV_NAMES for a in node.names):
                out.append(f"{name}:{node.lineno}: imports os environment access")
    return out


def dvc_stages(root: Path) -> dict[str, dict]:
    """dvc.yaml's stages with `foreach` expanded (`name@item`, `${item}` substituted)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    variables: dict = {}
    for entry in spec.get("vars", []):
        variables.update(entry)
    stages = {}
    for name, stage in spec["stages"].items():
        if "foreach" in stage:
            items = variables[stage["foreach"].strip("${} ")]
            for item in items:
                text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
                stages[f"{name}@{item}"] = yaml.safe_load(text)
        else:
            stages[name] = stage
    return stages


def _stage_entry(cmd: str) -> str:
    words = cmd.split()
    if words[0] != "bin/python":
        raise ValueError(f"stage command does not run bin/python (the project's interpreter): {cmd}")
    if words[1:3] == ["-m", "pgolf"]:
        return "-m pgolf.__main__"
    if words[1].startswith("stages/"):
        return words[1]
    raise ValueError(f"unrecognized stage command: {cmd}")


def expand_code_deps(root: Path, deps: list[str]) -> set[str]:
    out = set()
    for dep in deps:
        path = root / dep
        if dep.startswith("pgolf/") and path.is_dir():
            out.update(p.relative_to(root).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif dep.startswith("pgolf/"):
            out.add(dep)
    return out


def dvc_code_deps(root: Path) -> list[str]:
    """Each stage's pgolf deps are exactly the modules its script imports (transitively)."""
    files = module_files(root)
    out = []
    for name, stage in dvc_stages(root).items():
        entry = _stage_entry(stage["cmd"])
        modules = closure(["pgolf.__main__"], root) if entry.startswith("-m") else script_imports(root / entry, root)
        expected = {files[m].relative_to(root).as_posix() for m in modules}
        declared = expand_code_deps(root, [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])])
        for missing in sorted(expected - declared):
            out.append(f"dvc.yaml stage {name}: imports {missing}, not a dep")
        for extra in sorted(declared - expected):
            out.append(f"dvc.yaml stage {name}: dep {extra} is not imported")
        if not entry.startswith("-m") and entry not in stage.get("deps", []):
            out.append(f"dvc.yaml stage {name}: its script {entry} is not a dep")
    return out
