"""bin/python, the interpreter of every dvc.yaml command, runs the checkout's own pgolf: a DVC
experiment's temporary copy (queued, --temp) must not import an editable install's working tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_copy_of_the_project_imports_its_own_pgolf(tmp_path):
    copy = tmp_path / "copy"
    (copy / "pgolf").mkdir(parents=True)
    shutil.copytree(REPO / "bin", copy / "bin")
    (copy / "pgolf" / "__init__.py").write_text("WHERE = 'the copy'\n")
    out = subprocess.run([str(copy / "bin" / "python"), "-c", "import pgolf; print(pgolf.WHERE, pgolf.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["the", "copy"] and str(copy / "pgolf") in out.stdout
    here = subprocess.run([str(REPO / "bin" / "python"), "-c", "import pgolf; print(pgolf.__file__)"],
                          capture_output=True, text=True, timeout=60)
    assert here.stdout.strip() == str(REPO / "pgolf" / "__init__.py")
