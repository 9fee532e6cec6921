"""Profiles: `pgolf profile show/apply`, the line-by-line params editor and the DVC-lock guard."""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pgolf.cli import main
from pgolf.config.sections import load_params
from pgolf.dvclock import dvc_busy
from pgolf.profiles import apply_profile, list_profiles, load_profile, merge
from pgolf.yamledit import EditError, edit_yaml, format_value, same

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"
SHIPPED = [p.name for p in list_profiles(PROFILES)]


def _key_paths(lines: list[str]) -> list[str]:
    """The dotted key each line belongs to (its own key, or the nearest enclosing one): an
    independent, deliberately simple reading of block YAML for checking diffs."""
    stack: list[tuple[int, str]] = []
    paths = []
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        match = re.match(r"([\w.-]+)\s*:(\s|$)", stripped)
        if not stripped or stripped.startswith("#"):
            paths.append("")
        elif match and not stripped.startswith("- "):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(1)))
            paths.append(".".join(k for _, k in stack))
        else:  # a sequence item or continuation: part of the enclosing key
            paths.append(".".join(k for _, k in stack))
    return paths


def _touched(old: str, new: str) -> set[str]:
    """Keys of every line the diff removes, replaces or adds."""
    a, b = old.splitlines(), new.splitlines()
    pa, pb = _key_paths(a), _key_paths(b)
    touched = set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            touched |= {pa[i] for i in range(i1, i2)} | {pb[j] for j in range(j1, j2)}
    return touched


def _related(key: str, changed: list[str]) -> bool:
    """`key` is a changed key, inside one (a list's items) or holds one (an inline map's line)."""
    return any(key == c or key.startswith(c + ".") or c.startswith(key + ".") for c in changed)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_shows(name, capsys):
    assert main(["profile", "show", name, "--dir", str(PROFILES)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {PROFILES / name}.yaml: ")
    assert yaml.safe_load(out) == yaml.safe_load((PROFILES / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_apply_changes_only_the_lines_of_changed_keys(name, tmp_path):
    params = tmp_path / "params.yaml"
    old = (REPO / "params.yaml").read_text()
    params.write_text(old)
    profile, changed = apply_profile(name, params, PROFILES)
    new = params.read_text()
    assert changed, "every shipped profile changes something"
    # The file now holds exactly the merged mapping, and it validates.
    assert same(yaml.safe_load(new), merge(yaml.safe_load(old), yaml.safe_load(profile.path.read_text())))
    load_params(params)
    touched = _touched(old, new)
    assert touched and all(_related(key, changed) for key in touched), sorted(k for k in touched if not _related(k, changed))
    # Everything else is byte for byte what it was: comments, `null`s, inline lists and maps.
    untouched = [line for line, key in zip(old.splitlines(), _key_paths(old.splitlines())) if not _related(key, changed)]
    new_lines = set(new.splitlines())
    assert all(line in new_lines for line in untouched)
    removed = sum(1 for line in difflib.ndiff(old.splitlines(), new.splitlines()) if line.startswith("- "))
    assert removed <= len(changed)  # one line per changed value at most (here: never a whole block)
    # A second apply is a no-op.
    assert apply_profile(name, params, PROFILES)[1] == []
    assert params.read_text() == new


def test_formatting_is_kept_on_a_small_file(tmp_path):
    text = (
        "# top\n"
        "fetch:\n"
        "  source: builtin   # where from\n"
        "  builtin: [sotu]   # corpora\n"
        "  endpoint: null\n"
        "train:\n"
        "  model:\n"
        "    layers: 4       # official: 9\n"
        "    rope_dims: null\n"
        "  optim:\n"
        "    embed: {lr: 0.05, beta1: 0.9, eps: 1.0e-8}   # Adam\n"
        "quantize:\n"
        "  attention: {bits: 6, k: 12.0}\n"
    )
    overrides = {
        "fetch": {"builtin": ["sotu", "shakespeare"]},
        "train": {"model": {"layers": 9, "width": 512}, "optim": {"embed": {"lr": 0.6, "weight_decay": 0.0}}},
        "quantize": {"attention": {"bits": 8}, "method": "rtn"},
        "aggregate": {"seeds": [1, 2]},
    }
    new, changed = edit_yaml(text, overrides)
    assert new == (
        "# top\n"
        "fetch:\n"
        "  source: builtin   # where from\n"
        "  builtin: [sotu, shakespeare] # corpora\n"  # the comment keeps its column when it can
        "  endpoint: null\n"
        "train:\n"
        "  model:\n"
        "    layers: 9       # official: 9\n"
        "    rope_dims: null\n"
        "    width: 512\n"
        "  optim:\n"
        "    embed: {lr: 0.6, beta1: 0.9, eps: 1.0e-8, weight_decay: 0.0} # Adam\n"
        "quantize:\n"
        "  attention: {bits: 8, k: 12.0}\n"
        "  method: rtn\n"
        "\n"
        "aggregate:\n"
        "  seeds: [1, 2]\n"
    )
    assert sorted(changed) == sorted([
        "fetch.builtin", "train.model.layers", "train.model.width", "train.optim.embed.lr",
        "train.optim.embed.weight_decay", "quantize.attention.bits", "quantize.method", "aggregate",
    ])


def test_values_round_trip_through_the_formatter():
    for value in [None, True, False, 0, -3, 1.0, 1e-08, 3.0e-4, 1e20, 0.1, "relu2", "(proj|fc)$", "a: b", "#x",
                  "null", "1024", "", "yes", [1, [2.5, "x y"]], {"k": [None, "z"]}]:
        assert same(yaml.safe_load(f"v: {format_value(value)}")["v"], value), value


def test_unsafe_edits_are_refused_and_name_the_key():
    anchored = "tokenizer:\n  vocab_size: &v 1024\nexport:\n  val_docs: *v\n"
    with pytest.raises(EditError, match=r"^params.yaml: cannot edit tokenizer.vocab_size safely"):
        edit_yaml(anchored, {"tokenizer": {"vocab_size": 512}})
    multiline = "tokenizer: {vocab_size: 1024,\n  num_threads: 2}\n"
    with pytest.raises(EditError, match="tokenizer.vocab_size"):
        edit_yaml(multiline, {"tokenizer": {"vocab_size": 512}})
    with pytest.raises(EditError, match="params.yaml:3: a.b: duplicate key"):
        edit_yaml("a:\n  b: 1\n  b: 2\n", {"a": {"b": 3}})


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pgolf", "profile", *args, "--dir", str(PROFILES)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )


def _dvc_repo(tmp_path: Path) -> Path:
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    (tmp_path / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return tmp_path


def test_apply_refuses_while_dvc_holds_the_repo_lock(tmp_path):
    zc_lockfile = pytest.importorskip("zc.lockfile")  # DVC's own repository lock
    repo = _dvc_repo(tmp_path)
    before = (repo / "params.yaml").read_bytes()
    lock = zc_lockfile.LockFile(str(repo / ".dvc" / "tmp" / "lock"))
    try:
        proc = _cli(repo, "apply", "tiny")
    finally:
        lock.close()
    assert proc.returncode == 1
    assert re.fullmatch(rf"error: params.yaml: not changed: a DVC command is running \(.*lock is held by pid {os.getpid()}\).*\n",
                        proc.stderr), proc.stderr
    assert (repo / "params.yaml").read_bytes() == before
    # Released (the lock file stays behind, as DVC leaves it): apply goes ahead.
    assert dvc_busy(repo) is None
    assert _cli(repo, "apply", "tiny").returncode == 0
    assert (repo / "params.yaml").read_bytes() != before


def test_apply_refuses_while_a_stage_holds_the_rwlock(tmp_path):
    from dvc.fs import localfs
    from dvc.rwlock import rwlock

    repo = _dvc_repo(tmp_path)
    before = (repo / "params.yaml").read_bytes()
    tmp = str(repo / ".dvc" / "tmp")
    # What DVC holds while a stage's command runs (it releases the repo lock then).
    with rwlock(tmp, localfs, "dvc repro", [str(repo / "params.yaml")], [str(repo / "data")], False):
        proc = _cli(repo, "apply", "tiny")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "rwlock names running pid" in proc.stderr and "dvc repro" in proc.stderr
    assert (repo / "params.yaml").read_bytes() == before
    # An entry left by a killed process is stale: DVC ignores it, and so does pgolf.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (repo / ".dvc" / "tmp" / "rwlock").write_text(
        f'{{"write": {{"{repo}/data": {{"pid": {dead.pid}, "cmd": "dvc repro"}}}}}}')
    assert dvc_busy(repo) is None


@pytest.mark.slow
def test_apply_refuses_during_a_real_dvc_repro(tmp_path):
    """A real `dvc repro` of a stage that waits for a file: refused while it runs, applied after."""
    repo = _dvc_repo(tmp_path)
    (repo / ".dvc" / "config").unlink()
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q", "-f"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, timeout=120)
    (repo / "wait.py").write_text(
        "import pathlib, time\npathlib.Path('started').touch()\n"
        "while not pathlib.Path('go').exists():\n    time.sleep(0.1)\npathlib.Path('out').touch()\n")
    (repo / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python wait.py\n    deps: [params.yaml]\n    outs: [out]\n")
    before = (repo / "params.yaml").read_bytes()
    dvc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (repo / "started").exists():
            assert dvc.poll() is None and time.monotonic() < deadline, dvc.stdout.read() if dvc.stdout else ""
            time.sleep(0.1)
        proc = _cli(repo, "apply", "tiny")
        assert proc.returncode == 1 and "a DVC command is running" in proc.stderr, proc.stderr
        assert (repo / "params.yaml").read_bytes() == before
    finally:
        (repo / "go").touch()
        output = dvc.communicate(timeout=120)[0]
    assert dvc.returncode == 0, output
    assert _cli(repo, "apply", "tiny").returncode == 0


def _get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def test_frontier_8xh100_is_the_2135_recipe():
    """The figures of CHALLENGE.md's recipe of PR #2135 that pgolf has keys for, and a header naming what is missing."""
    profile = load_profile("frontier-8xh100", PROFILES)
    expected = {
        "tokenizer.vocab_size": 8192, "tokenizer.text_transform": "caseops", "export.val_docs": 50000,
        "train.model.layers": 11, "train.model.width": 512, "train.model.heads": 8, "train.model.kv_heads": 4,
        "train.model.mlp_mult": 4.0, "train.model.activation": "leaky_relu2", "train.model.leaky_slope": 0.5,
        "train.model.rope_dims": 16, "train.model.qk_gain_init": 5.0, "train.model.xsa_layers": 11,
        "train.model.recur_start": 3, "train.model.recur_end": 5, "train.model.recur_loops": 2,
        "train.model.recur_from_progress": 0.35, "train.model.parallel_from": 8, "train.model.skip_gates": True,
        "train.model.ln_scale": True, "train.model.smear_gate": True, "train.model.smear_window": 12,
        "train.model.attn_out_gate": True, "train.model.asymmetric_softcap": True, "train.model.logit_softcap": 30.0,
        "train.optim.matrix.lr": 0.028, "train.optim.matrix.momentum": 0.97, "train.optim.matrix.momentum_warmup_start": 0.92,
        "train.optim.matrix.momentum_warmup_steps": 1500, "train.optim.matrix.weight_decay": 0.095,
        "train.optim.matrix.row_normalize": True, "train.optim.embed.lr": 0.03, "train.optim.embed.weight_decay": 0.085,
        "train.optim.embed.beta2": 0.99, "train.optim.scalar.lr": 0.02, "train.optim.scalar.beta2": 0.99,
        "train.optim.grad_clip_norm": 0.3, "train.batch_tokens": 786432, "train.seq_len": 2048,
        "train.warmdown_fraction": 0.85, "train.final_lr_fraction": 0.1, "train.final_lr_mode": "clamp",
        "train.ema_decay": 0.9965, "calibrate.batches": 32, "quantize.attention.k": 13.0, "quantize.mlp.k": 11.5,
        "quantize.embedding.bits": 7, "quantize.embedding.k": 14.0, "quantize.lowrank_rank": 4, "quantize.lowrank_top": 3,
        "eval_sliding.window": 2048, "eval_sliding.stride": 64, "eval_ttt.lora_rank": 80, "eval_ttt.chunk_tokens": 48,
        "aggregate.reference_mean_bpb": 1.05651,
    }
    assert {key: _get(profile.overrides, key) for key in expected} == expected
    assert len(profile.overrides["train"]["optim"]["matrix"]["ns_coefficients"]) == 5  # Polar Express
    targets = profile.overrides["eval_ttt"]["lora_targets"]  # LoRA on Q, V, O and the MLP; K left out
    assert re.search(targets, "blocks.0.attn.c_k") is None
    assert all(re.search(targets, f"blocks.0.{name}") for name in ("attn.c_q", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj"))
    for missing in ("tokenizer file", "phased TTT", "n-gram tilt", "lrzip"):
        assert missing in profile.description, missing


def test_frontier_cpu_header_gives_its_measured_time():
    profile = load_profile("frontier-cpu", PROFILES)
    assert re.search(r"measured \d+ s per run", profile.description), profile.description
