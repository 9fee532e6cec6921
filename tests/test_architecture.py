"""The walls of the architecture, read from the import graph and the sources; each check also
fails on a planted violation in a copy of the tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from arch_rules import dvc_code_deps, dvc_stages, import_walls, source_walls
from pgolf.eval.methods import stage_methods

REPO = Path(__file__).resolve().parents[1]


def test_the_walls_hold():
    assert import_walls(REPO) == []
    assert source_walls(REPO) == []


def test_dvc_code_deps_are_exactly_the_imports():
    assert dvc_code_deps(REPO) == []


def test_eval_stages_are_the_registrys_stage_methods():
    stages = dvc_stages(REPO)
    evals = sorted(name.split("@")[1] for name in stages if name.startswith("eval@"))
    assert evals == sorted(stage_methods())
    for method in stage_methods():
        assert f"metrics/eval_{method}.json" in stages["aggregate"]["deps"], method
        assert f"metrics/eval_{method}.json" in stages["report"]["deps"], method
        assert f"eval_{method}" in stages["aggregate"]["params"], method


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the package, the stage scripts and dvc.yaml."""
    root = tmp_path / "tree"
    shutil.copytree(REPO / "pgolf", root / "pgolf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    assert import_walls(root) == [] and source_walls(root) == [] and dvc_code_deps(root) == []
    return root


def plant(root: Path, rel: str, line: str) -> None:
    path = root / rel
    path.write_text(path.read_text() + "\n" + line + "\n")


@pytest.mark.parametrize("module, line, expected", [
    ("pgolf/quant/gptq.py", "from pgolf.train.checkpoint import read_meta", "pgolf.quant.gptq imports training (pgolf.train.checkpoint)"),
    ("pgolf/pack/codecs.py", "def f():\n    import pgolf.train.data", "pgolf.pack.codecs imports training (pgolf.train.data)"),
    ("pgolf/eval/bpb.py", "LOADER = 'pgolf.train.loop'", "pgolf.eval.bpb imports training (pgolf.train.loop)"),
    ("pgolf/model/layers.py", "from pgolf.dist import DistInfo", "pgolf.model.layers imports training or distribution (pgolf.dist)"),
    ("pgolf/model/gpt.py", "from pgolf.optim.muon import Muon", "pgolf.model.gpt imports training or distribution (pgolf.optim"),
])
def test_import_walls_catch_a_planted_import(tree, module, line, expected):
    plant(tree, module, line)
    assert any(v.startswith(expected) for v in import_walls(tree)), import_walls(tree)


@pytest.mark.parametrize("module, line, expected", [
    ("pgolf/aggregate.py", "CMD = ['python', 'stages/train.py']", "names stages/ or dvc.yaml"),
    ("pgolf/plots.py", "SPEC = open('dvc.yaml').read", "names stages/ or dvc.yaml"),
    ("pgolf/train/loop.py", "import os\nRANK = os.environ.get('RANK')", "reads the process environment (os.environ)"),
    ("pgolf/io.py", "from os import getenv", "imports os environment access"),
    ("pgolf/stats.py", "\n".join(["X = 1"] * 400), "lines (at most 400)"),
])
def test_source_walls_catch_a_planted_violation(tree, module, line, expected):
    plant(tree, module, line)
    assert any(expected in v for v in source_walls(tree)), source_walls(tree)


def test_dvc_deps_check_catches_an_undeclared_import_and_a_stale_dep(tree):
    plant(tree, "stages/report.py", "import pgolf.stats")
    assert "dvc.yaml stage report: imports pgolf/stats.py, not a dep" in dvc_code_deps(tree)
    text = (tree / "dvc.yaml").read_text().replace("      - stages/report.py\n", "      - stages/report.py\n      - pgolf/stats.py\n      - pgolf/audit.py\n")
    (tree / "dvc.yaml").write_text(text)
    assert "dvc.yaml stage report: dep pgolf/audit.py is not imported" in dvc_code_deps(tree)
