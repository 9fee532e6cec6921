"""A small real DVC project with experiments, for `pgolf exp table` (tests/test_exptable.py).

One stage reads pgolf's full params.yaml and writes metrics/eval_sliding.json, eval_ttt.json and
pack.json (the committed default run's numbers, shifted by a few params), so `dvc exp show --json`
has pgolf's real params and metrics layout. `python tests/exp_repo.py OUT.json` rebuilds
tests/fixtures/exp_show.json (in a temporary directory; needs git and dvc on PATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STAGE = '''import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
base = {n: json.load(open(f"base/{n}.json")) for n in ("eval_sliding", "eval_ttt", "pack")}
layers, stride = p["train"]["model"]["layers"], p["eval_sliding"]["stride"]
shift = 0.012 * (4 - layers) + 0.00002 * (stride - 128) + (0.003 if p["pack"]["compressor"] != "best" else 0.0)
base["eval_sliding"]["val_bpb"] += shift
base["eval_ttt"]["val_bpb"] += shift
base["eval_ttt"]["val_bpb_no_ttt"] += shift
base["pack"]["bytes_model"] = base["pack"]["bytes_model"] * layers // 4
base["pack"]["bytes_total"] = base["pack"]["bytes_model"] + base["pack"]["bytes_code"]
pathlib.Path("metrics").mkdir(exist_ok=True)
for name, data in base.items():
    json.dump(data, open(f"metrics/{name}.json", "w"), indent=2)
'''

DVC_YAML = """stages:
  fake:
    cmd: python stage.py
    deps: [stage.py, base]
    params: [train, pack, eval_sliding]
    metrics:
      - metrics/eval_sliding.json: {cache: false}
      - metrics/eval_ttt.json: {cache: false}
      - metrics/pack.json: {cache: false}
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "pgolf-test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "pgolf-test@localhost"
    return env


def sh(cwd: Path, *args: str) -> str:
    proc = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def build(root: Path) -> Path:
    """A git+DVC repo with a baseline commit, two experiments and one queued experiment."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (root / "base").mkdir(exist_ok=True)
    for name in ("eval_sliding", "eval_ttt", "pack"):
        (root / "base" / f"{name}.json").write_text((REPO / "metrics" / f"{name}.json").read_text())
    (root / "stage.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    sh(root, "git", "init", "-q", "-b", "main")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "repro", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "baseline")
    sh(root, "dvc", "exp", "run", "-q", "-S", "eval_sliding.stride=64", "-n", "stride-64")
    sh(root, "dvc", "exp", "run", "-q", "-S", "eval_sliding.stride=128", "-S", "train.model.layers=3",
       "-S", "pack.compressor=lzma", "-n", "layers-3-lzma")
    sh(root, "dvc", "exp", "run", "-q", "--queue", "-S", "train.model.layers=5", "-n", "layers-5-queued")
    return root


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        Path(sys.argv[1]).write_text(sh(build(Path(tmp) / "repo"), "dvc", "exp", "show", "--json"))
