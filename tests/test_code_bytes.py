"""bytes_code counts exactly the artifact runtime: the static import closure of pgolf.runtime
equals what a fresh interpreter imports when it loads an artifact and scores it by every method."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgolf.errors import ArtifactError
from pgolf.imports import closure, closure_files
from pgolf.pack.code_bytes import measure_code_bytes

REPO = Path(__file__).resolve().parents[1]


def write_package(root: Path, modules: dict[str, str]) -> None:
    for name, source in modules.items():
        path = root / Path(*name.split("."))
        if name.count(".") == 0 or source.startswith("#pkg"):
            path.mkdir(parents=True, exist_ok=True)
            (path / "__init__.py").write_text(source)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".py").write_text(source)


def test_closure_follows_function_level_imports_strings_and_parent_packages(tmp_path):
    write_package(tmp_path, {
        "pgolf": "",
        "pgolf.sub": "#pkg\n",
        "pgolf.sub.a": "def f():\n    from pgolf.b import g\n",
        "pgolf.b": "import os\nREGISTRY = {'x': 'pgolf.c'}\n",
        "pgolf.c": "print('c')\n" * 40,
        "pgolf.unused": "import pgolf.c\n",
    })
    assert closure(["pgolf.sub.a"], tmp_path) == ["pgolf", "pgolf.b", "pgolf.c", "pgolf.sub", "pgolf.sub.a"]
    code = measure_code_bytes(["pgolf.sub.a"], tmp_path)
    assert code.files == ("pgolf/__init__.py", "pgolf/b.py", "pgolf/c.py", "pgolf/sub/__init__.py", "pgolf/sub/a.py")
    bundle_len = sum(len(f"# file: {f}\n") + len((tmp_path / f).read_bytes()) + 1 for f in code.files)
    assert code.bytes_raw == bundle_len and 0 < code.bytes_code < code.bytes_raw
    with pytest.raises(ArtifactError, match="pgolf.nothing"):
        measure_code_bytes(["pgolf.nothing"], tmp_path)


RUNTIME_PROBE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(1)
    from pgolf.runtime import evaluate_artifact, load_artifact_model, load_val_stream
    from pgolf.eval.methods import METHODS
    ws = json.loads(sys.argv[2])
    stream = load_val_stream(ws["shards"], ws["tokenizer"])
    model = load_artifact_model(ws["artifact"], ws["tokenizer"])
    small = {"plain": {"seq_len": 64}, "sliding": {"window": 64, "stride": 32},
             "ttt": {"chunk_tokens": 32, "window": 64, "batch_docs": 4, "legality_tokens": 128},
             "tilt": {"window": 64, "stride": 32, "legality_tokens": 128}}
    for name, method in METHODS.items():
        evaluate_artifact(name, model, stream.prefix(400), method.params(**small[name]))
    print(json.dumps(sorted(m for m in sys.modules if m == "pgolf" or m.startswith("pgolf."))))
""")


def test_runtime_closure_equals_a_fresh_interpreters_imports(tmp_path):
    from eval_helpers import make_workspace  # a real tiny tokenizer, shards, checkpoint and artifact

    ws = make_workspace(tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", RUNTIME_PROBE, str(REPO), json.dumps({k: str(v) for k, v in ws.items() if k in ("shards", "tokenizer", "artifact")})],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    imported = set(json.loads(probe.stdout.strip().splitlines()[-1]))
    assert imported == set(closure(["pgolf.runtime"], REPO))
    files = closure_files(["pgolf.runtime"], REPO)
    for forbidden in ("pgolf/train/", "pgolf/quant/gptq.py", "pgolf/tokenizer.py", "pgolf/stage.py", "pgolf/eval/run.py"):
        assert not any(f.startswith(forbidden) for f in files), forbidden
    code = measure_code_bytes(["pgolf.runtime"], REPO)
    assert code.files == tuple(sorted(files)) and 1000 < code.bytes_code < 200_000
