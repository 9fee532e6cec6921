"""Provenance: the configuration hash, data fingerprints, what goes where, and `pgolf provenance diff`."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgolf.config.aggregate import AggregateParams
from pgolf.data.shards import write_shard
from pgolf.io import timing_path, write_metrics
from pgolf.provenance import (Provenance, add_provenance_command, canonical_json, config_hashes, data_fingerprint, diff,
                              environment, flatten, git_state, read_directory, shard_files, stage_provenance)

leaf = st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none(), st.floats(allow_nan=False, allow_infinity=False))
configs = st.dictionaries(st.text(min_size=1, max_size=4), st.dictionaries(st.text(min_size=1, max_size=4), leaf, max_size=4), max_size=4)


@given(configs)
def test_config_hash_ignores_key_order(sections):
    reordered = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(sections.items()))}
    assert config_hashes(sections) == config_hashes(reordered)


def test_config_hash_is_sha256_of_canonical_json_and_sees_every_value():
    params = AggregateParams()
    hashes = config_hashes({"aggregate": params})
    plain = params.model_dump(mode="json")
    assert hashes["config"]["aggregate"] == hashlib.sha256(canonical_json(plain)).hexdigest()
    assert hashes["config_sha256"] == hashlib.sha256(canonical_json({"aggregate": plain})).hexdigest()
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    other = config_hashes({"aggregate": AggregateParams(alpha=0.02)})
    assert other["config_sha256"] != hashes["config_sha256"] and other["config"]["aggregate"] != hashes["config"]["aggregate"]
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_data_fingerprint_of_shards_manifest_and_tokenizer(tmp_path):
    import numpy as np

    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(10, dtype=np.uint16))
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(20, dtype=np.uint16))
    (tmp_path / "manifest.json").write_text('{"vocab_size": 1024}')
    (tmp_path / "tok.model").write_bytes(b"sp")
    data = data_fingerprint(shard_files(tmp_path), tokenizer=tmp_path / "tok.model")
    digest = lambda name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()  # noqa: E731
    assert data == {"manifest_sha256": digest("manifest.json"),
                    "shards_sha256": {"fineweb_val_000000.bin": digest("fineweb_val_000000.bin"),
                                      "fineweb_train_000000.bin": digest("fineweb_train_000000.bin")},
                    "tokenizer_sha256": digest("tok.model")}
    assert list(data_fingerprint(shard_files(tmp_path, ("val",)))["shards_sha256"]) == ["fineweb_val_000000.bin"]
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(1, 11, dtype=np.uint16))  # one token changed
    assert data_fingerprint(shard_files(tmp_path))["shards_sha256"]["fineweb_val_000000.bin"] != data["shards_sha256"]["fineweb_val_000000.bin"]


def test_environment_on_cpu():
    import torch

    env = environment(torch.device("cpu"))
    assert env["torch"] == torch.__version__ and env["cuda"] == torch.version.cuda
    assert env["device"] == {"kind": "cpu", "count": 1} and env["driver"] is None and env["pgolf"]
    assert environment(None, 1) == {**env, "cuda": None}  # a stage without a model: the same, CUDA unused


def test_a_stage_without_a_model_does_not_import_torch():
    code = "import sys; from pgolf.provenance import environment; e = environment(); print('torch' in sys.modules, e['torch'] is not None)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["False", "True"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_commit_and_dirty_code_only(tmp_path):
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}
    _git(tmp_path, "init", "-q")
    (tmp_path / "pgolf").mkdir()
    (tmp_path / "pgolf" / "x.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text("a\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    assert git_state(tmp_path) == {"git_commit": _git(tmp_path, "rev-parse", "HEAD"), "git_dirty": False}
    (tmp_path / "dvc.lock").write_text("b\n")  # an output changing during `dvc repro` is not dirty code
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "pgolf" / "x.py").write_text("x = 2\n")
    assert git_state(tmp_path)["git_dirty"] is True


def test_stable_fields_in_metrics_volatile_in_the_timing_sidecar(tmp_path):
    """The metrics file is committed and compared by `dvc metrics diff`: no commit in it."""
    provenance = stage_provenance({"aggregate": AggregateParams()}, None, root=tmp_path)
    write_metrics(tmp_path / "m" / "x.json", {"val_bpb": 1.0}, {"seconds": 2.0}, provenance)
    metrics = json.loads((tmp_path / "m" / "x.json").read_text())
    timing = json.loads(timing_path(tmp_path / "m" / "x.json").read_text())
    assert metrics["val_bpb"] == 1.0 and timing["seconds"] == 2.0
    assert set(metrics["provenance"]) == {"config_sha256", "config", "pgolf", "python", "torch", "cuda", "driver", "device", "data"}
    assert timing["provenance"] == {"git_commit": None, "git_dirty": None}
    assert not set(metrics["provenance"]) & set(timing["provenance"])
    write_metrics(tmp_path / "m" / "y.json", {"a": 1}, {})
    assert "provenance" not in json.loads((tmp_path / "m" / "y.json").read_text())


def test_flatten_and_diff():
    assert flatten({"a": {"b": 1, "c": {}}, "d": None}) == {"a.b": 1, "a.c": {}, "d": None}
    a = {"train.json": {"torch": "2.5", "device": {"kind": "cpu", "count": 1}, "git_dirty": False}, "pack.json": {"x": 1}}
    b = {"train.json": {"torch": "2.6", "device": {"kind": "cpu", "count": 8}}, "eval.json": {"x": 1}}
    assert diff(a, b) == [
        "eval.json: only in B",
        "pack.json: only in A",
        'train.json: device.count: 1 -> 8',
        "train.json: git_dirty: false -> -",
        'train.json: torch: "2.5" -> "2.6"',
    ]
    assert diff(a, a) == []


def main(argv: list[str]) -> int:
    """`pgolf <argv>` through the command's own parser (pgolf.cli wires the same function)."""
    parser = argparse.ArgumentParser(prog="pgolf")
    add_provenance_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _run_dir(root: Path, torch_version: str, commit: str) -> Path:
    prov = Provenance({"torch": torch_version, "config_sha256": "abc"}, {"git_commit": commit, "git_dirty": False})
    write_metrics(root / "train.json", {"steps": 3}, {"wallclock_seconds": 1.0}, prov)
    (root / "plain.json").write_text('{"no": "provenance"}')
    return root


def test_provenance_diff_of_directories(tmp_path, capsys):
    a, b = _run_dir(tmp_path / "a", "2.5", "c1"), _run_dir(tmp_path / "b", "2.6", "c2")
    assert read_directory(a) == {"train.json": {"torch": "2.5", "config_sha256": "abc", "git_commit": "c1", "git_dirty": False}}
    assert main(["provenance", "diff", str(a), str(b)]) == 0
    assert capsys.readouterr().out.splitlines() == ['train.json: git_commit: "c1" -> "c2"', 'train.json: torch: "2.5" -> "2.6"']
    assert main(["provenance", "diff", str(a), str(a)]) == 0
    assert capsys.readouterr().out.startswith("no differences")


def test_provenance_diff_of_git_revisions(tmp_path, capsys):
    _git(tmp_path, "init", "-q")
    _run_dir(tmp_path / "metrics", "2.5", "c1")
    _git(tmp_path, "add", "metrics/train.json")  # the sidecar stays out of git, as in the repo
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    first = _git(tmp_path, "rev-parse", "HEAD")
    _run_dir(tmp_path / "metrics", "2.6", "c2")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    assert main(["provenance", "diff", first, "HEAD", "--repo", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == ['train.json: torch: "2.5" -> "2.6"']
    assert main(["provenance", "diff", "nosuchrev", "HEAD", "--repo", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
