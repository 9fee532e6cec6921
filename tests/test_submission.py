"""pgolf submission export: the record folder of a tiny real run, and its train_gpt.py run in a fresh
virtual environment that has the third-party packages of requirements.txt and no pgolf."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

from data_helpers import english_docs
from pgolf.aggregate import SeedRun, aggregate
from pgolf.bytetable import byte_table, stream_bytes
from pgolf.config.sections import load_params
from pgolf.data.shards import SHARDS_MANIFEST, write_shard
from pgolf.errors import ArtifactError
from pgolf.eval.methods import METHODS, stage_methods
from pgolf.eval.run import eval_stage
from pgolf.pack.load import load_artifact, model_from_artifact
from pgolf.pack.pack import pack_stage
from pgolf.quant.calibrate import calibrate_stage
from pgolf.quant.stage import quantize_stage
from pgolf.submission.bundle import bundle_modules, extract, minify, program_params, self_extracting, third_party_imports
from pgolf.submission.export import RunPaths, config_diff, export_record, run_hardware, run_versions, versions
from pgolf.tokenizer import train_tokenizer
from pgolf.config.data import TokenizerParams
from pgolf.train.stage import run_train_stage

REPO = Path(__file__).resolve().parents[1]
SEEDS = [1337, 7]


# ------------------------------------------------------------------ pure pieces


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=400))
def test_self_extracting_wrapper_round_trips(source: str) -> None:
    assert extract(self_extracting(source)) == source


def test_wrapper_runs_its_source() -> None:
    scope: dict = {}
    exec(self_extracting("x = sum(range(10))\n"), scope)
    assert scope["x"] == 45


def test_minify_drops_docstrings_and_comments_keeps_behaviour() -> None:
    source = '"""Module doc."""\n# a comment\ndef f(x):\n    """Doc."""\n    return x * 2  # double\nclass C:\n    """Only a doc."""\n'
    small = minify(source)
    assert "doc" not in small.lower() and "comment" not in small and "#" not in small
    scope: dict = {}
    exec(small, scope)
    assert scope["f"](21) == 42 and isinstance(scope["C"], type)


def test_third_party_imports() -> None:
    sources = ["import numpy as np\nfrom torch import nn\nimport json, os.path\nfrom pgolf.io import x\nfrom . import y\n",
               "def f():\n    import yaml\n"]
    assert third_party_imports(sources) == {"numpy", "torch", "yaml"}


def test_bundle_is_the_entry_closure_without_export_or_stage_plumbing() -> None:
    names = set(bundle_modules(REPO, minified=False))
    assert {"pgolf.submission.entry", "pgolf.train.loop", "pgolf.quant.gptq", "pgolf.pack.pack", "pgolf.runtime", "pgolf.dist"} <= names
    assert not names & {"pgolf.submission.export", "pgolf.submission.bundle", "pgolf.submission.cli", "pgolf.cli", "pgolf.aggregate"}


def test_hardware_and_versions_come_from_the_provenance() -> None:
    gpu = {"pgolf": "0.1.0", "python": "3.12.1", "torch": "2.9.0", "cuda": "12.8", "driver": "570.1", "device": {"kind": "NVIDIA H100 80GB HBM3", "count": 8}}
    assert run_versions(gpu) == {"pgolf": "0.1.0", "python": "3.12.1", "torch": "2.9.0", "cuda": "12.8", "driver": "570.1"}
    assert run_versions(None) == versions()  # a run without provenance: this process's
    assert run_hardware({1: {"provenance": gpu}, 2: {"provenance": gpu}}) == "8x NVIDIA H100 80GB HBM3"
    cpu = {**gpu, "device": {"kind": "cpu", "count": 1}}
    assert run_hardware({1: {"provenance": gpu}, 2: {"provenance": cpu}}) == "8x NVIDIA H100 80GB HBM3 / 1x cpu"
    assert run_hardware({1: {"provenance": None}}) is None


def test_config_diff_lists_only_changed_values() -> None:
    sections = load_params(REPO / "profiles" / "tiny.yaml")
    rows = {key: (default, value) for key, default, value in config_diff(sections)}
    assert rows["train.iterations"] == (300, 12)
    assert rows["train.model.layers"][1] == 2
    assert "train.lr_warmup_steps" not in rows and "pack.limit_bytes" not in rows


# ------------------------------------------------------------------ a tiny real run


def _tiny_params(root: Path) -> Path:
    raw = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    raw["train"].update(device="cpu", resume_dir=str(root / "resume"), threads=1)
    raw["eval_sliding"] = {**raw.get("eval_sliding", {}), "legality_tokens": 256}
    raw["eval_tilt"] = {"window": 128, "stride": 64, "legality_tokens": 256}
    raw["aggregate"] = {"seeds": SEEDS}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(path)  # valid
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """The DVC outputs of a tiny two-seed run, made by the stages' library calls (no dvc repro)."""
    root = tmp_path_factory.mktemp("run")
    docs = english_docs(2000)
    tokenizer = train_tokenizer(docs[8:], TokenizerParams(vocab_size=384), root / "data/tokenizer")
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    shards = root / "data/shards"
    encode = lambda ds: np.concatenate([[sp.bos_id(), *sp.encode(d)] for d in ds]).astype(np.uint16)  # noqa: E731
    val = encode(docs[:3])
    write_shard(shards / "fineweb_val_000000.bin", val)
    write_shard(shards / "fineweb_train_000000.bin", encode(docs[8:60]))
    (shards / SHARDS_MANIFEST).write_text(json.dumps({"vocab_size": sp.vocab_size(), "bos_id": sp.bos_id()}))
    params_path = _tiny_params(root)
    s = load_params(params_path)
    paths = RunPaths.under(root)
    m = paths.metrics
    m.mkdir(parents=True)  # the audit's figure aggregate reads: bytes per validation token
    (m / "audit.json").write_text(json.dumps({"bytes_per_token": float(stream_bytes(byte_table(sp), val).sum()) / len(val)}))
    cwd = os.getcwd()
    os.chdir(REPO)  # the pack stage measures bytes_code from the source tree here, as under dvc repro
    try:
        run_train_stage(s["train"], shards, root / "data/train", m / "train.json", paths.curves, None, s["calibrate"])
        checkpoint = root / "data/train/checkpoint"
        calibrate_stage(s["calibrate"], checkpoint, [shards / "fineweb_train_000000.bin"], root / "data/calibrate", m / "calibrate.json")
        quantize_stage(s["quantize"], checkpoint, root / "data/calibrate", root / "data/quantize", m / "quantize.json", s["pack"])
        pack_stage(s["pack"], root / "data/quantize", root / "data/pack", m / "pack.json", tokenizer=tokenizer)
        evals = {name: s[f"eval_{name}"] for name in stage_methods()}
        for name, p in evals.items():
            eval_stage(name, p, root / "data/pack", shards, tokenizer, checkpoint, m / f"eval_{name}.json")
        run = SeedRun(s["train"], s["calibrate"], s["quantize"], s["pack"], evals, shards, tokenizer, params_path)
        aggregate(s["aggregate"], s["train"].seed, m, paths.aggregate, run)
    finally:
        os.chdir(cwd)
    return paths


@pytest.fixture(scope="module")
def record(tiny_run: RunPaths, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_record("TinyRun", "2026-01-02", tmp_path_factory.mktemp("records"), tiny_run, package_root=REPO)


def test_record_folder_matches_the_run(tiny_run: RunPaths, record: Path) -> None:
    assert record.name == "2026-01-02_TinyRun"
    for name in ("train_gpt.py", "submission.json", "README.md", "requirements.txt", "metrics/seed-1337/pack.json",
                 "metrics/seed-7/eval_sliding.json", "metrics/seed-1337/timing/train.json", "train_curves"):
        assert (record / name).exists(), name
    sub = json.loads((record / "submission.json").read_text())
    agg = json.loads((tiny_run.metrics / "aggregate.json").read_text())
    method = sub["eval_method"]
    assert sub["seeds"] == SEEDS == agg["seeds"]
    assert method == min(stage_methods(), key=lambda m: agg[m]["mean_bpb"])
    assert math.isclose(sub["val_bpb"], agg[method]["mean_bpb"], rel_tol=1e-12)
    assert math.isclose(sub["val_bpb_std"], agg[method]["std_bpb"], rel_tol=1e-12)
    code = (record / "train_gpt.py").stat().st_size
    models = {s: json.loads((record / f"metrics/seed-{s}/pack.json").read_text())["bytes_model"] for s in SEEDS}
    assert sub["bytes_code"] == code
    assert {s: r["artifact_bytes"] for s, r in sub["seed_results"].items()} == {str(s): b + code for s, b in models.items()}
    assert sub["bytes_total"] == max(models.values()) + code
    pins = (record / "requirements.txt").read_text().splitlines()[1:]
    assert all("==" in line for line in pins) and any(line.startswith("torch==") for line in pins)
    readme = (record / "README.md").read_text()
    assert "`train.iterations` | `300` | `12`" in readme and "strict reading" in readme and f"{sub['val_bpb']:.5f}" in readme
    provenance = json.loads((tiny_run.metrics / "train.json").read_text())["provenance"]
    assert sub["hardware"] == "1x cpu" and "hardware: 1x cpu; " in readme
    assert sub["versions"]["torch"] == sub["pytorch_version"] == provenance["torch"] and sub["versions"]["cuda"] == provenance["cuda"]
    run_git = json.loads((tiny_run.metrics / "timing" / "train.json").read_text())["provenance"]
    assert sub["git"] == {"commit": run_git["git_commit"], "dirty": run_git["git_dirty"]} and "not 8x H100 80GB SXM" in readme
    params = program_params((record / "train_gpt.py").read_text())
    assert params["train"]["iterations"] == 12 and set(params) == {"train", "calibrate", "quantize", "pack", *(f"eval_{m}" for m in stage_methods())}


def test_export_over_the_limit_fails_in_one_line_and_writes_nothing(tiny_run: RunPaths, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as err:
        export_record("Big", "2026-01-02", tmp_path, tiny_run, limit_bytes=50_000, package_root=REPO)
    assert "exceeds 50000 by" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "2026-01-02_Big").exists()


# ------------------------------------------------------------------ the program in a fresh venv


def _distributions(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions of `names` and, transitively, of their requirements (markers
    evaluated for no extras)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement of a platform or extra this machine does not have
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def fresh_venv(where: Path, requirement_lines: list[str]) -> Path:
    """A new venv of the base interpreter (no pip, no system site-packages) holding only the
    requirements' distributions, linked from this environment instead of downloaded. Returns its python."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    names = [Requirement(line).name for line in requirement_lines]
    for dist in _distributions(names):
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(dist.locate_file(top))
            if top != "__pycache__" and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return python


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}}


def test_train_gpt_runs_in_a_fresh_venv_and_its_artifact_loads(tiny_run: RunPaths, record: Path, tmp_path: Path) -> None:
    pins = [line for line in (record / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    python = fresh_venv(tmp_path / "venv", pins)
    work = tmp_path / "work"
    work.mkdir()
    no_pgolf = subprocess.run([str(python), "-c", "import pgolf"], cwd=work, env=_clean_env(), capture_output=True, text=True)
    assert no_pgolf.returncode != 0 and "No module named 'pgolf'" in no_pgolf.stderr
    data = tiny_run.root / "data"
    done = subprocess.run([str(python), str(record / "train_gpt.py"), "--shards", str(data / "shards"), "--tokenizer",
                           str(data / "tokenizer/tokenizer.model"), "--out", str(work / "run"), "--steps", "3"],
                          cwd=work, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = work / "run"
    result = json.loads((run / "result.json").read_text())
    assert result["steps"] == 3 and set(result["val_bpb"]) == set(stage_methods())
    assert all(math.isfinite(v) for v in result["val_bpb"].values())
    artifact = run / "pack" / "model.pgolf"
    model = model_from_artifact(load_artifact(artifact), artifact)
    assert model.tok_emb.weight.shape[0] == 384
    pack = json.loads((run / "metrics" / "pack.json").read_text())
    code = (record / "train_gpt.py").stat().st_size
    assert pack["bytes_model"] == artifact.stat().st_size == result["bytes_model"]
    assert pack["bytes_code"] == code == json.loads((record / "submission.json").read_text())["bytes_code"]
    assert pack["bytes_total"] == result["bytes_total"] == artifact.stat().st_size + code
    assert (run / "train.log").read_text().count("bytes_total") >= 1
    assert set(METHODS) >= set(result["val_bpb"])
