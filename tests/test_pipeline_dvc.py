"""End to end: the whole pipeline under `dvc repro` in a throwaway copy of the repo (tiny profile).

One copy is built per module and reproduced once; the later tests change one thing at a time and
check exactly which stages rerun, that failures touch nothing, and that experiments, metrics diffs
and offline plots work. Each test leaves the copy reproduced and clean for the next.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline_repo import copy_repo, run, stages_run

pytestmark = pytest.mark.slow

MODEL_STAGES = {"train", "calibrate", "quantize", "pack", "eval@sliding", "eval@ttt"}
METRICS_KEYS = {
    "audit.json": {"val_docs", "val_tokens", "val_bytes", "bytes_per_token", "vocab_size"},
    "train.json": {"steps", "tokens_seen", "train_loss", "val_loss", "params_count"},
    "pack.json": {"artifact", "bytes_model", "bytes_code", "bytes_total", "limit_bytes"},
    "eval_sliding.json": {"val_bpb", "val_loss", "scored_tokens", "scored_bytes", "quantization_gap"},
    "eval_ttt.json": {"val_bpb", "val_loss", "scored_tokens", "scored_bytes", "quantization_gap", "val_bpb_no_ttt"},
    "aggregate.json": {"seeds", "sliding", "ttt", "reference"},
}


def _set_param(repo: Path, dotted: str, value) -> None:
    path = repo / "params.yaml"
    data = yaml.safe_load(path.read_text())
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _digest_outputs(repo: Path) -> dict[str, str]:
    digests = {}
    for root in ("data", "metrics"):
        for path in sorted((repo / root).rglob("*")):
            if path.is_file():
                digests[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _commit(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("pipeline"), profile="tiny")
    proc = run(repo, "dvc", "repro")
    ran = set(stages_run(proc.stdout))
    assert {"params", "fetch", "tokenizer", "export", "audit"} | MODEL_STAGES <= ran, proc.stdout[-3000:]
    _commit(repo, "reproduced")
    return repo


def test_every_metrics_file_and_the_budget(repo):
    for name, keys in METRICS_KEYS.items():
        data = json.loads((repo / "metrics" / name).read_text())
        assert keys <= set(data), f"{name} lacks {keys - set(data)}"
    pack = json.loads((repo / "metrics/pack.json").read_text())
    assert pack["bytes_total"] == pack["bytes_model"] + pack["bytes_code"] <= pack["limit_bytes"]
    assert (repo / pack["artifact"]).is_file()
    audit = json.loads((repo / "metrics/audit.json").read_text())
    for name in ("eval_sliding.json", "eval_ttt.json"):
        scored = json.loads((repo / "metrics" / name).read_text())
        assert scored["scored_bytes"] == audit["val_bytes"], name
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["steps"] > 0 and train["val_loss"] > 0


def test_second_repro_is_a_noop(repo):
    proc = run(repo, "dvc", "repro")
    assert stages_run(proc.stdout) == []
    assert run(repo, "git", "status", "--porcelain").stdout.strip() == ""


def test_eval_param_reruns_only_that_evaluation(repo):
    stride = yaml.safe_load((repo / "params.yaml").read_text())["eval_sliding"]["stride"]
    _set_param(repo, "eval_sliding.stride", max(1, stride // 2))
    ran = set(stages_run(run(repo, "dvc", "repro").stdout))
    assert "eval@sliding" in ran
    # `params` revalidates params.yaml on any change; its constant stamp stops the cascade.
    assert not ran & {"fetch", "tokenizer", "export", "audit", "train", "calibrate", "quantize", "pack", "eval@ttt"}, ran
    assert ran <= {"params", "eval@sliding", "rd", "aggregate", "report"}, ran  # rd scores its points by eval_sliding
    points = json.loads((repo / "metrics" / "plots" / "rd.json").read_text())  # the tiny profile's curve, for real
    assert {p["method"] for p in points} == {"gptq", "rtn"} and sum(p["val_bpb"] is not None for p in points) == 2
    assert (repo / "metrics" / "plots" / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _commit(repo, "stride")


def test_pack_param_reruns_pack_and_evaluations_never_training(repo):
    """quantize reads the pack section too (quantize.target_bytes codes the symbols as pack will):
    it reruns, in seconds; training and calibration never do."""
    current = yaml.safe_load((repo / "params.yaml").read_text())["pack"]["compressor"]
    _set_param(repo, "pack.compressor", "zstd" if current != "zstd" else "brotli")
    ran = set(stages_run(run(repo, "dvc", "repro").stdout))
    assert {"pack", "eval@sliding", "eval@ttt", "eval@tilt"} <= ran, ran
    assert not ran & {"fetch", "tokenizer", "export", "audit", "train", "calibrate"}, ran
    assert ran <= {"params", "quantize", "pack", "rd", "eval@sliding", "eval@ttt", "eval@tilt", "aggregate", "report"}, ran
    _commit(repo, "compressor")


def test_keys_that_cannot_change_a_result_rerun_nothing(repo):
    train = yaml.safe_load((repo / "params.yaml").read_text())["train"]
    for key, value in (("log_every", train["log_every"] + 1), ("threads", train["threads"] + 1), ("checkpoint_every", train["checkpoint_every"] + 7)):
        _set_param(repo, f"train.{key}", value)
    status = run(repo, "dvc", "status", "--json").stdout
    assert set(json.loads(status)) <= {"params"}, status  # only the guard revalidates; train is clean
    assert set(stages_run(run(repo, "dvc", "repro").stdout)) <= {"params"}
    _commit(repo, "non-result keys")


def test_bad_key_stops_repro_and_changes_no_outputs(repo):
    before = _digest_outputs(repo)
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(re.sub(r"(?m)^(\s+)layers:", r"\1layerz:", original, count=1))
        proc = run(repo, "dvc", "repro", check=False)
        assert proc.returncode != 0
        assert "train.model.layerz: unknown key" in proc.stdout + proc.stderr
        assert _digest_outputs(repo) == before
        params.write_text(original)
        _set_param(repo, "train.seed", -5)
        proc = run(repo, "dvc", "repro", check=False)
        assert proc.returncode != 0 and "train.seed: must be >= 0, got -5" in proc.stdout + proc.stderr
        assert _digest_outputs(repo) == before
    finally:
        params.write_text(original)
    assert set(stages_run(run(repo, "dvc", "repro").stdout)) <= {"params"}


def test_experiment_and_metrics_diff_across_branches(repo):
    layers = yaml.safe_load((repo / "params.yaml").read_text())["train"]["model"]["layers"]
    run(repo, "dvc", "exp", "run", "-S", f"train.model.layers={layers + 1}")
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert '"val_bpb"' in text and '"bytes_total"' in text
    run(repo, "git", "checkout", "-q", "-b", "deeper")
    _commit(repo, "deeper model")
    diff = json.loads(run(repo, "dvc", "metrics", "diff", "main", "deeper", "--json").stdout)
    assert "metrics/pack.json" in diff and "bytes_total" in diff["metrics/pack.json"]
    run(repo, "git", "checkout", "-q", "main")
    run(repo, "dvc", "checkout", "-q")


def test_plots_render_offline(repo):
    out = repo / "plots_html"
    run(repo, "dvc", "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "vega" in html and "{plot_divs}" not in html
    assert not re.search(r"<script[^>]+src=\"https?://", html), "plots page loads scripts from the network"
    assert (repo / "metrics/plots/train_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_check_on_the_tiny_run(repo, tmp_path):
    """`pgolf plan --check` (issue 16) against the tiny profile's real pack as first reproduced
    (later tests change its compressor): bytes_total predicted from params alone within 2 %."""
    import argparse
    import contextlib
    import io

    from pgolf.plan import add_plan_command

    first = run(repo, "git", "log", "--format=%H", "--grep=^reproduced$").stdout.split()[0]
    (tmp_path / "metrics").mkdir()
    for name in ("params.yaml", "metrics/pack.json", "metrics/audit.json"):
        (tmp_path / name).write_text(run(repo, "git", "show", f"{first}:{name}").stdout)
    parser = argparse.ArgumentParser()
    add_plan_command(parser.add_subparsers())
    args = parser.parse_args(["plan", "--params", str(tmp_path / "params.yaml"), "--root", str(repo), "--check",
                              "--metrics", str(tmp_path / "metrics"), "--json"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0, out.getvalue()
    check = json.loads(out.getvalue())["check"]
    assert check[0]["quantity"] == "bytes_total" and abs(check[0]["error_pct"]) <= 2.0, check[:3]
