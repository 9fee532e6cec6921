"""`pgolf ablate`: the option table, each run's `-S` arguments (applied with DVC's own parser), the
report from `dvc exp show --json` (experiments cloned from tests/fixtures/exp_show.json, real DVC
output), the plan read from a git repository, and one real short ablation (slow)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

from pgolf.ablate import Plan, check_params, experiments, make_plan, render_report, resolved
from pgolf.ablate_report import place_section
from pgolf.ablation_options import (
    ALL_ON, BASELINE, OPTIONS, PROPOSALS, arms, exp_name, flatten, is_on, mismatch, partition, run_params, select, set_args,
)
from pgolf.cli import main
from pgolf.errors import PgolfError
from pgolf.profiles import merge

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "exp_show.json"
REV = "ab" * 20


def _base(profile: str) -> dict:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    return merge(base, yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text()))


# ------------------------------------------------------------------------------------------- table
def test_every_option_is_off_in_the_defaults():
    on, skipped = partition(list(OPTIONS), resolved({}))
    assert on == [] and len(skipped) == len(OPTIONS)
    assert all(line.endswith(": off in the profile") for line in skipped), skipped


def test_frontier_cpu_turns_every_option_on():
    on, skipped = partition(list(OPTIONS), resolved(_base("frontier-cpu")))
    assert skipped == [] and [o.name for o in on] == [o.name for o in OPTIONS]


def test_an_option_whose_key_is_unknown_is_skipped_with_the_key_named():
    full = resolved({})
    del full["train"]["model"]["xsa_layers"]
    on, skipped = partition(select(["xsa"]), full)
    assert on == [] and skipped == ["xsa: train.model.xsa_layers is not a params key"]


def test_select_by_name_and_group_in_table_order():
    assert [o.name for o in select(["ema", "xsa"])] == ["xsa", "ema"]
    assert {o.group for o in select(["record"])} == {"record"} and len(select(["all"])) == len(OPTIONS)
    assert select(["record", "frontier"]) == list(OPTIONS)
    with pytest.raises(ValueError, match=r"unknown ablation option 'nope' \(known: xsa, recurrence"):
        select(["nope"])


def test_arms_are_all_on_then_one_per_option():
    made = arms(select(["xsa", "doc_attention"]))
    assert [a.name for a in made] == [ALL_ON, "no-xsa", "no-doc_attention"]
    assert made[0].overrides == {} and made[2].overrides == {"train.model.doc_attention": False, "train.loader": "sequential"}
    assert exp_name("abl-x", made[1].name, 7) == "abl-x-no-xsa-s7"


def test_set_args_give_each_runs_params_through_dvcs_parser(tmp_path):
    """Every arm's `-S` arguments, applied by DVC's Hydra-based parser, give exactly run_params; a
    key the file lacks goes through `++` (plain `key=value` is refused for it)."""
    from dvc.utils.hydra import apply_overrides

    base = _base("frontier-cpu")
    del base["train"]["loader"]  # absent from the file: DVC must add it
    for arm in arms(list(OPTIONS)):
        path = tmp_path / f"{arm.name}.yaml"
        path.write_text(yaml.safe_dump(base))
        args = set_args(base, arm, 7)
        assert args[::2] == ["-S"] * (len(args) // 2)
        apply_overrides(str(path), args[1::2])
        assert mismatch(run_params(base, arm, 7), yaml.safe_load(path.read_text())) == [], arm.name
    assert "++train.loader=sequential" in set_args(base, arms(select(["packed_loader"]))[1], 1)


def test_mismatch_names_each_differing_key_and_tells_int_from_float():
    assert mismatch({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 2]}}) == []
    assert mismatch({"a": {"b": 1}}, {"a": {"b": 1.0}}) == ["a.b: 1.0 != 1"]
    assert mismatch({"a": {"b": 1}}, {"a": {"b": 1, "d": 2}}) == ["a.d: 2 != None"]
    assert flatten({"a": {"b": [], "c": {}}}) == {"a.b": [], "a.c": {}}


# ------------------------------------------------------------------------------------------ report
def _plan(options: list[str], seeds: list[int]) -> Plan:
    text = (REPO / "profiles" / "frontier-cpu.yaml").read_text()
    return Plan("frontier-cpu", REV, _base("frontier-cpu"), arms(select(options)), ["bigram_hash: off in the profile"],
                seeds, "abl-t", "eval@sliding", "pgolf ablate frontier-cpu --rev ababab --seeds 1,2,3", text)


def _exp_show(plan: Plan, values: dict[str, list[float | None]], size: int = 300_000) -> list:
    """`dvc exp show --json` with one experiment per (arm, seed) that has a value, in DVC's format."""
    template = json.loads(FIXTURE.read_text())
    commit = copy.deepcopy(template[1]) | {"rev": REV, "experiments": []}
    finished, queued = template[1]["experiments"][0]["revs"][0], template[1]["experiments"][2]
    for arm in plan.arms:
        for seed, value in zip(plan.seeds, values[arm.name]):
            if value is None:
                continue
            exp = copy.deepcopy(finished)
            exp["name"] = name = exp_name(plan.prefix, arm.name, seed)
            exp["rev"] = f"{len(commit['experiments']):040x}"
            exp["data"]["params"]["params.yaml"]["data"] = run_params(plan.base, arm, seed)
            exp["data"]["metrics"]["metrics/eval_sliding.json"]["data"]["val_bpb"] = value
            exp["data"]["metrics"]["metrics/pack.json"]["data"]["bytes_total"] = size + seed
            commit["experiments"].append({"revs": [exp], "executor": None, "name": name})
    stuck = copy.deepcopy(queued)  # queued under a name of the plan: no result
    stuck["revs"][0]["name"] = stuck["name"] = exp_name(plan.prefix, "no-ln_scale", plan.seeds[-1])
    commit["experiments"].append(stuck)
    other = copy.deepcopy(commit) | {"rev": "cd" * 20}  # another baseline: ignored
    return [template[0], commit, other]


def _row(report: str, arm: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {arm} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_from_dvc_exp_show():
    plan = _plan(["xsa", "ema", "ln_scale"], [1, 2, 3])
    values = {ALL_ON: [1.50, 1.51, 1.49], "no-xsa": [1.60, 1.62, 1.61], "no-ema": [1.40, 1.41, 1.39],
              "no-ln_scale": [1.505, 1.515, None]}
    exps = _exp_show(plan, values)
    found = experiments(exps, REV)
    assert sorted(found) == sorted(exp_name("abl-t", a, s) for a, v in values.items() for s, x in zip([1, 2, 3], v) if x)
    names = {a: exp_name("abl-t", ALL_ON, s) for a, s in (("s1", 1), ("s2", 2), ("s3", 3))}
    timing = {names["s1"]: {"rev": found[names["s1"]].rev, "tokens_per_second": 1000.0},
              names["s2"]: {"rev": found[names["s2"]].rev, "tokens_per_second": 2000.0},
              names["s3"]: {"rev": "0" * 40, "tokens_per_second": 9999.0}}  # another run's commit: not used
    report = render_report(plan, found, timing, 0.05, "docs/ablations-timing.json")
    assert report.startswith("# Leave-one-out ablation: profile `frontier-cpu`\n")
    assert "    pgolf ablate frontier-cpu --rev ababab --seeds 1,2,3\n" in report and f"commit `{REV}`" in report
    assert (REPO / "profiles" / "frontier-cpu.yaml").read_text().rstrip() in report
    assert "Selected options without an arm: bigram_hash: off in the profile." in report
    assert "- Runs present: 11 of 12.\n" in report

    ref = values[ALL_ON]
    assert _row(report, ALL_ON) == ["all-on", "(nothing)", "3/3", "1.5000 +- 0.0100", "-", "-", "reference", "1,500", "300,002"]
    for arm, word in (("no-xsa", "helps"), ("no-ema", "hurts"), ("no-ln_scale", "no significant effect")):
        vals = [v for v in values[arm] if v is not None]
        cells = _row(report, arm)
        p = stats.ttest_ind(vals, ref, equal_var=False, alternative="greater").pvalue  # independent of pgolf.stats
        mean = sum(vals) / len(vals)
        assert cells[2] == f"{len(vals)}/3" and cells[3].startswith(f"{mean:.4f} +- ")
        assert cells[4] == f"{mean - 1.5:+.4f}" and cells[5] == f"{p:.3g}" and cells[6] == word, cells
        assert cells[7] == "-"  # no timing for these runs
    assert _row(report, "no-ema")[1] == "`train.ema_decay=0.0`"
    assert "| no-ln_scale | 1.5050 | 1.5150 | - |" in report  # per-seed table


def test_report_with_one_seed_has_no_test_and_marks_missing_arms():
    plan = _plan(["xsa", "ema"], [1])
    found = experiments(_exp_show(plan, {ALL_ON: [1.5], "no-xsa": [1.6], "no-ema": [None]}), REV)
    report = render_report(plan, found, {}, 0.05, "t.json")
    assert _row(report, "no-xsa")[2:7] == ["1/1", "1.6000", "+0.1000", "-", "too few seeds for a test"]
    assert _row(report, "no-ema")[2:7] == ["0/1", "-", "-", "-", "not run"]


def test_an_experiment_with_other_params_is_refused():
    plan = _plan(["xsa"], [1])
    exps = _exp_show(plan, {ALL_ON: [1.5], "no-xsa": [1.6]})
    exps[1]["experiments"][1]["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["model"]["layers"] = 9
    with pytest.raises(PgolfError, match=r"experiment abl-t-no-xsa-s1 exists with other params \(train.model.layers: 9 != 4\)"
                                         r".*dvc exp remove abl-t-no-xsa-s1"):
        check_params(plan, experiments(exps, REV))


def test_bad_exp_show_output_is_one_line():
    with pytest.raises(PgolfError, match="expected a list of commits"):
        experiments({"not": "a list"}, REV)


# ------------------------------------------------------------------------------- plan from git
def _git_repo(root: Path) -> Path:
    (root / "profiles").mkdir(parents=True)
    (root / ".dvc").mkdir()
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (root / "profiles" / "frontier-cpu.yaml").write_text((REPO / "profiles" / "frontier-cpu.yaml").read_text())
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, capture_output=True, timeout=60)
    return root


def test_plan_reads_the_committed_params_and_profile(tmp_path):
    root = _git_repo(tmp_path)
    committed = (root / "profiles" / "frontier-cpu.yaml").read_text()
    (root / "profiles" / "frontier-cpu.yaml").write_text(committed + "eval_sliding: {stride: 32}\n")  # not committed
    plan = make_plan(root, "frontier-cpu", ["record"], [1, 2], None, "eval@sliding")
    assert plan.profile_text == committed and plan.base["eval_sliding"]["stride"] == 128
    assert [a.name for a in plan.arms] == [ALL_ON] + [f"no-{o.name}" for o in select(["record"])]
    assert re.fullmatch(r"pgolf ablate frontier-cpu --rev [0-9a-f]{7} --seeds 1,2 --option record", plan.command)
    with pytest.raises(PgolfError, match=r"^profiles/nope.yaml is not committed at [0-9a-f]{7}"):
        make_plan(root, "nope", ["record"], [1], None, "eval@sliding")
    with pytest.raises(PgolfError, match="--seeds: give distinct seeds"):
        make_plan(root, "frontier-cpu", ["record"], [1, 1], None, "eval@sliding")


def test_dry_run_prints_each_arms_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(_git_repo(tmp_path))
    assert main(["ablate", "frontier-cpu", "--dry-run", "--seeds", "4,5", "--option", "xsa", "--option", "value_embed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == [
        "dvc exp run eval@sliding -S train.seed=4 -n abl-frontier-cpu-all-on-s4",
        "dvc exp run eval@sliding -S train.seed=4 -S train.model.xsa_layers=0 -n abl-frontier-cpu-no-xsa-s4",
        "dvc exp run eval@sliding -S train.seed=4 -S 'train.model.value_embed_layers=[]' -n abl-frontier-cpu-no-value_embed-s4",
    ]
    assert main(["ablate", "frontier-cpu", "--dry-run", "--option", "nope"]) == 1
    assert capsys.readouterr().err.startswith("error: unknown ablation option 'nope'")


# ------------------------------------------------------------------------------------ a real run
@pytest.mark.slow
def test_a_real_ablation_runs_beside_the_workspace_and_resumes(tmp_path):
    """About 2 minutes on 2 quiet cores: 2 real experiments (all on, no EMA; 1 seed) of the tiny
    pipeline up to eval@sliding, each ~45 s of which the model work is ~2 s (the rest: DVC and the
    start-up of 6 stage processes); then a rerun that finds both and a --report-only."""
    sys.path.insert(0, str(Path(__file__).parent))
    from pipeline_repo import copy_repo, run

    repo = copy_repo(tmp_path / "repo", "tiny")
    (repo / "profiles" / "tiny-ema.yaml").write_text(_tiny_with_ema())
    # A project whose pipeline never ran here: no dvc.lock naming outputs this cache lacks.
    run(repo, "git", "rm", "-q", "dvc.lock")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "tiny-ema profile")
    before = ((repo / "params.yaml").read_bytes(), run(repo, "git", "status", "--porcelain", "--untracked-files=all").stdout)
    cmd = [sys.executable, "-m", "pgolf", "ablate", "tiny-ema", "--option", "ema", "--seeds", "5"]
    first = run(repo, *cmd, timeout=900)
    assert "0 of 2 runs present, 2 to run" in first.stdout and re.search(r"run 2 of 2: abl-tiny-ema-no-ema-s5: val_bpb \d\.\d{4}, \d+s; ETA", first.stdout)
    # The workspace is as it was: params.yaml, no outputs, no worktree; the report is new.
    assert (repo / "params.yaml").read_bytes() == before[0] and not (repo / "data").exists()
    status = run(repo, "git", "status", "--porcelain", "--untracked-files=all").stdout.splitlines()
    assert [line for line in status if " docs/" not in line] == before[1].splitlines()
    assert {line for line in status if " docs/" in line} <= {" M docs/ablations.md", "?? docs/ablations.md", " M docs/ablations-timing.json", "?? docs/ablations-timing.json"}
    assert len(run(repo, "git", "worktree", "list").stdout.splitlines()) == 1
    found = experiments(json.loads(run(repo, sys.executable, "-m", "dvc", "exp", "show", "--json").stdout),
                        run(repo, "git", "rev-parse", "HEAD").stdout.strip())
    timing = json.loads((repo / "docs" / "ablations-timing.json").read_text())
    # The timing file keeps what earlier ablations (the committed ones) recorded and adds these two.
    assert sorted(found) == ["abl-tiny-ema-all-on-s5", "abl-tiny-ema-no-ema-s5"] and set(found) <= set(timing)
    assert all(timing[n]["rev"] == found[n].rev and timing[n]["tokens_per_second"] > 0 for n in found)
    report = (repo / "docs" / "ablations.md").read_text()
    assert _row(report, "no-ema")[2] == "1/1" and _row(report, "no-ema")[6] == "too few seeds for a test"
    # Resumable: both present, nothing runs; --report-only writes the same report.
    again = run(repo, *cmd, timeout=300)
    assert "2 of 2 runs present, 0 to run" in again.stdout
    assert (repo / "docs" / "ablations.md").read_text() == report
    run(repo, *cmd, "--report-only", timeout=300)
    assert (repo / "docs" / "ablations.md").read_text() == report


def _tiny_with_ema() -> str:
    tiny = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    tiny["train"]["ema_decay"] = 0.9
    return "# tiny with EMA on: one option for the ablation test\n" + yaml.safe_dump(tiny, sort_keys=False)


# ---------------------------------------------------------------------------- add-one (proposals)
def test_proposals_make_add_one_arms_and_are_off_in_the_defaults():
    proposals = select(["proposals"])
    assert [o.name for o in proposals] == [o.name for o in PROPOSALS] and all(o.on for o in proposals)
    on, skipped = partition(proposals, resolved({}))
    assert on == proposals and skipped == []  # add-one: an arm for each proposal that is off
    assert [a.name for a in arms(on)] == [BASELINE] + [f"with-{o.name}" for o in proposals]
    assert arms(on)[1].overrides == dict(proposals[0].on)
    # Every proposal's `on` overrides validate and switch it on; its `off` values are the defaults.
    for option in proposals:
        params = run_params({}, arms([option])[1], 1)
        assert is_on(option, resolved(params)), option.name
    with pytest.raises(ValueError, match="cannot mix add-one"):
        partition(select(["xsa", "sharing"]), resolved({}))
    assert [o.name for o in select(["all"])] == [o.name for o in OPTIONS]  # "all": the leave-one-out table


def test_add_one_report_reads_lower_as_helps():
    text = (REPO / "profiles" / "frontier-cpu.yaml").read_text()
    plan = Plan("p", REV, {}, arms(select(["sharing", "mup"])), [], [1, 2, 3], "abl-p", "eval@sliding", "pgolf ablate p", text)
    values = {BASELINE: [1.50, 1.51, 1.49], "with-sharing": [1.40, 1.41, 1.39], "with-mup": [1.60, 1.61, 1.62]}
    report = render_report(plan, experiments(_exp_show(plan, values), REV), {}, 0.05, "t.json")
    assert report.startswith("# Add-one ablation: profile `p`\n") and "| arm | switches on |" in report
    sharing, mup = _row(report, "with-sharing"), _row(report, "with-mup")
    p = stats.ttest_ind(values["with-sharing"], values[BASELINE], equal_var=False, alternative="less").pvalue
    assert sharing[4] == "-0.1000" and sharing[5] == f"{p:.3g}" and sharing[6] == "helps"
    assert mup[4] == "+0.1100" and mup[6] == "hurts"
    assert _row(report, BASELINE)[6] == "reference"


def test_report_sections_replace_only_their_own():
    first = place_section("", "abl-a", "# A\nold\n")
    assert first == "<!-- pgolf ablate: abl-a -->\n# A\nold\n<!-- end pgolf ablate: abl-a -->\n"
    both = place_section(first, "abl-b", "# B\n")
    assert both.startswith(first) and both.endswith("<!-- pgolf ablate: abl-b -->\n# B\n<!-- end pgolf ablate: abl-b -->\n")
    updated = place_section(both, "abl-a", "# A\nnew\n")
    assert "new" in updated and "old" not in updated and updated.count("# B") == 1
    assert updated.index("abl-a") < updated.index("abl-b")  # kept in place
    assert place_section("# a report written before sections\n", "abl-a", "# A\n").startswith("<!-- pgolf ablate: abl-a -->")
