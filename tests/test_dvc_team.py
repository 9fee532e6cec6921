"""Team scale on DVC alone (issue 16): a second machine pulls what the first computed, experiments
travel through a git remote, and queued ablations run side by side. docs/team.md walks through
the same commands and quotes the times this module prints (`pytest tests/test_dvc_team.py -s`).

Machine A is a copy of this repository on the tiny profile with no extra seed (`aggregate.seeds:
[]`), reproduced once; its git remote `origin` is a bare repository and its DVC remote a local
directory, both in tmp. Machine B is a `git clone` of `origin` with its own DVC cache. Every
experiment changes `aggregate.reference_mean_bpb`, the cheapest key that changes a metric: it
reruns only `params` (the guard) and `aggregate` (no extra seed: no training), from cached
upstream outputs.
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline_repo import copy_repo, run, stages_run

pytestmark = pytest.mark.slow

KEY = "aggregate.reference_mean_bpb"
STAMP = "data/params.ok"  # the guard's stamp: `cache: false` and git-ignored, so never shared
ABLATION_STAGES = {"params", "aggregate"}


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def timed(times: dict[str, tuple[float, float]], step: str) -> Iterator[None]:
    """Record the step's wall seconds and the CPU seconds of the commands it waited for (a detached
    process, such as a queue worker, is not counted)."""
    wall, cpu = time.perf_counter(), _child_cpu()
    yield
    times[step] = (time.perf_counter() - wall, _child_cpu() - cpu)


def digests(repo: Path) -> dict[str, str]:
    """sha256 of every file under data/, metrics/ and dvclive/, without the untracked timing sidecars."""
    out = {}
    for root in ("data", "metrics", "dvclive"):
        for path in sorted((repo / root).rglob("*")):
            rel = path.relative_to(repo).as_posix()
            if path.is_file() and not rel.startswith("metrics/timing/"):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def changes_besides_stamp(status: dict) -> dict:
    """`dvc status --json` without the entries that only name the guard's (unshared) stamp."""
    return {stage: entries for stage, entries in status.items() if STAMP not in json.dumps(entries)}


def experiment(shown: list, name: str) -> dict:
    """The `data` (params, metrics) of experiment `name` in `dvc exp show --json` output."""
    for commit in shown:
        for exp_range in commit.get("experiments") or []:
            for rev in exp_range.get("revs") or []:
                if (rev.get("name") or exp_range.get("name")) == name:
                    return rev["data"]
    raise AssertionError(f"experiment {name} not in dvc exp show: {[c.get('name') or c['rev'] for c in shown]}")


def exp_value(data: dict) -> float:
    return data["params"]["params.yaml"]["data"]["aggregate"]["reference_mean_bpb"]


def exp_metrics(data: dict) -> dict:
    return {path: result["data"] for path, result in data["metrics"].items()}


@pytest.fixture(scope="module")
def times() -> Iterator[dict[str, tuple[float, float]]]:
    measured: dict[str, tuple[float, float]] = {}
    yield measured
    rows = [f"  {wall:7.1f} {cpu:7.1f}  {step}" for step, (wall, cpu) in measured.items()]
    print("\n     wall     cpu  (seconds)\n" + "\n".join(rows))


@pytest.fixture(scope="module")
def machine_a(tmp_path_factory, times) -> Path:
    root = tmp_path_factory.mktemp("team")
    with timed(times, "A: copy the repo (tiny profile, no extra seed)"):
        a = copy_repo(root / "a", profile="tiny", overrides={"aggregate": {"seeds": []}})
    with timed(times, "A: dvc repro (the whole tiny pipeline)"):
        ran = stages_run(run(a, "dvc", "repro").stdout)
    assert {"train", "pack", "aggregate"} <= set(ran), ran
    with timed(times, "A: dvc remote add -d (a local directory), commit"):
        run(a, "dvc", "remote", "add", "-d", "shared", str(root / "dvc-store"))
        run(a, "git", "add", "-A")
        run(a, "git", "commit", "-q", "-m", "reproduced; shared DVC remote")
    with timed(times, "A: dvc push"):
        run(a, "dvc", "push")
    run(root, "git", "init", "-q", "--bare", "-b", "main", "origin.git")
    run(a, "git", "remote", "add", "origin", str(root / "origin.git"))
    run(a, "git", "push", "-q", "origin", "main")
    return a


@pytest.fixture(scope="module")
def machine_b(machine_a, times) -> Path:
    b = machine_a.parent / "b"
    with timed(times, "B: git clone"):
        run(machine_a.parent, "git", "clone", "-q", str(machine_a.parent / "origin.git"), "b")
    assert not (b / "data").exists()
    with timed(times, "B: dvc pull"):
        run(b, "dvc", "pull")
    return b


def test_a_clone_pulls_instead_of_recomputing(machine_a, machine_b, times):
    a, b = machine_a, machine_b
    assert (b / ".dvc" / "cache").is_dir() and not (b / ".dvc" / "cache").samefile(a / ".dvc" / "cache")
    pulled, original = digests(b), digests(a)
    assert {k: v for k, v in original.items() if k != STAMP} == pulled  # every output, byte for byte
    with timed(times, "B: dvc status"):
        status = json.loads(run(b, "dvc", "status", "--json").stdout)
    assert changes_besides_stamp(status) == {}, status
    with timed(times, "B: dvc repro (nothing to recompute)"):
        ran = stages_run(run(b, "dvc", "repro").stdout)
    assert set(ran) <= {"params"}, ran  # at most the guard revalidates params.yaml, writing its stamp
    assert digests(b) == original
    assert json.loads(run(b, "dvc", "status", "--json").stdout) == {}
    assert not (b / "metrics" / "timing" / "train.json").exists()  # training never ran on B
    assert run(b, "git", "status", "--porcelain").stdout == ""


def test_experiments_travel_through_the_git_remote(machine_a, machine_b, times):
    a, b = machine_a, machine_b
    with timed(times, f"A: dvc exp run -S {KEY}=1.5"):
        ran = stages_run(run(a, "dvc", "exp", "run", "-S", f"{KEY}=1.5", "-n", "ref-1.5").stdout)
    assert set(ran) <= ABLATION_STAGES and "aggregate" in ran, ran
    shown_a = experiment(json.loads(run(a, "dvc", "exp", "show", "--json").stdout), "ref-1.5")
    run(a, "git", "checkout", "-q", "--", ".")  # the workspace back to main for the next test
    run(a, "dvc", "checkout", "-q")
    with timed(times, "A: dvc exp push origin ref-1.5"):
        run(a, "dvc", "exp", "push", "origin", "ref-1.5")
    with timed(times, "B: dvc exp pull origin ref-1.5"):
        run(b, "dvc", "exp", "pull", "origin", "ref-1.5")
    with timed(times, "B: dvc exp show --json"):
        shown_b = experiment(json.loads(run(b, "dvc", "exp", "show", "--json").stdout), "ref-1.5")
    assert exp_value(shown_b) == 1.5
    assert exp_metrics(shown_b) == exp_metrics(shown_a)
    assert exp_metrics(shown_b)["metrics/aggregate.json"]["reference"]["mean_bpb"] == 1.5
    with timed(times, "B: dvc exp apply ref-1.5"):
        run(b, "dvc", "exp", "apply", "ref-1.5")
    # The experiment's outputs came with it (exp push/pull carry the DVC cache): nothing to rerun.
    assert changes_besides_stamp(json.loads(run(b, "dvc", "status", "--json").stdout)) == {}
    assert json.loads((b / "metrics" / "aggregate.json").read_text())["reference"]["mean_bpb"] == 1.5


def test_queued_ablations_run_two_at_a_time(machine_a, times, tmp_path):
    a = machine_a
    assert run(a, "git", "status", "--porcelain").stdout == ""  # the queue runs committed files only
    values = {"q-1.3": 1.3, "q-1.4": 1.4}
    with timed(times, "A: dvc exp run --queue, twice"):
        for name, value in values.items():
            run(a, "dvc", "exp", "run", "--queue", "-S", f"{KEY}={value}", "-n", name)
    try:
        with timed(times, "A: dvc queue start -j 2, until dvc queue status shows both done"):
            run(a, "dvc", "queue", "start", "-j", "2", log=tmp_path / "queue-start.log")
            deadline = time.monotonic() + 900
            while re.search(r"\b(Queued|Running)\b", status := run(a, "dvc", "queue", "status").stdout):
                assert time.monotonic() < deadline, status
                time.sleep(5)  # each `dvc queue status` costs a second of CPU
    finally:
        run(a, "dvc", "queue", "stop", "--kill", check=False)
    assert all(re.search(rf"{re.escape(name)}\s.*Success", status) for name in values), status
    for name in values:
        ran = stages_run(run(a, "dvc", "queue", "logs", name).stdout)
        assert set(ran) <= ABLATION_STAGES and "aggregate" in ran, (name, ran)  # upstream came from the cache
    shown = json.loads(run(a, "dvc", "exp", "show", "--json").stdout)
    for name, value in values.items():
        data = experiment(shown, name)
        assert exp_value(data) == value
        assert exp_metrics(data)["metrics/aggregate.json"]["reference"]["mean_bpb"] == value
