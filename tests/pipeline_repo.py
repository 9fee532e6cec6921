"""Helpers for end-to-end tests: a throwaway git+DVC copy of this repository and a dvc runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pgolf.yamledit import edit_yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "pgolf-test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "pgolf-test@localhost"
    return env


def run(cwd: Path, *args: str, check: bool = True, timeout: float = 900, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command in `cwd`; its output is captured, or written to `log` (then read back) for a
    command that leaves daemons holding its output open (`dvc queue start`: pipes would block)."""
    if log is None:
        proc = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    else:
        with open(log, "w") as out:
            proc = subprocess.run(list(args), cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
        proc.stdout, proc.stderr = Path(log).read_text(), ""
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_repo(dest: Path, profile: str | None = "tiny", overrides: dict | None = None) -> Path:
    """Copy the tracked and non-ignored files into `dest`, apply `profile`, then `overrides` (a
    nested mapping merged into params.yaml), commit."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listing):
        src = REPO / rel
        if not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    template = REPO / ".dvc" / "plots" / "offline.html"
    if template.is_file():
        (dest / ".dvc" / "plots").mkdir(parents=True, exist_ok=True)
        shutil.copy2(template, dest / ".dvc" / "plots" / "offline.html")
    if profile:
        run(dest, sys.executable, "-m", "pgolf", "profile", "apply", profile)
    if overrides:
        params = dest / "params.yaml"
        params.write_text(edit_yaml(params.read_text(), overrides)[0])
    run(dest, "git", "init", "-q", "-b", "main")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-q", "-m", "test copy")
    return dest


def stages_run(output: str) -> list[str]:
    """Names of the stages `dvc repro` actually ran, from its output."""
    names = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("Running stage '"):
            names.append(line.split("'")[1])
    return names
