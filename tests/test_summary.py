"""`pgolf summary`: the key numbers of a run from metrics/*.json, on the committed default run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pgolf.cli import main
from pgolf.summary import collect, render

REPO = Path(__file__).resolve().parents[1]
METRICS = REPO / "metrics"


def _read(name: str) -> dict:
    return json.loads((METRICS / name).read_text())


def test_summary_of_the_committed_run_matches_its_files():
    s = collect(METRICS)
    sliding, ttt, pack, train = _read("eval_sliding.json"), _read("eval_ttt.json"), _read("pack.json"), _read("train.json")
    assert all(status == "ok" for status in s["files"].values())
    assert s["val_bpb"] == {"sliding": sliding["val_bpb"], "ttt": ttt["val_bpb"], "ttt_no_ttt": ttt["val_bpb_no_ttt"]}
    assert s["quantization_gap"] == {"sliding": sliding["quantization_gap"], "ttt": ttt["quantization_gap"]}
    assert s["bytes"]["total"] == pack["bytes_total"] == s["bytes"]["model"] + s["bytes"]["code"]
    assert s["bytes"]["headroom"] == pack["limit_bytes"] - pack["bytes_total"]
    assert s["train"]["steps"] == train["steps"]
    assert s["seeds"]["seeds"] == _read("aggregate.json")["seeds"]


def test_summary_reads_stage_times_from_the_timing_files(tmp_path):
    """Durations change run to run, so stages write them to metrics/timing/ (untracked), not metrics/."""
    metrics = tmp_path / "metrics"
    shutil.copytree(METRICS, metrics, ignore=shutil.ignore_patterns("timing", "plots"))
    assert collect(metrics)["stage_seconds"]["calibrate"] is None  # a fresh clone: not measured here
    (metrics / "timing").mkdir()
    timing = {"train.json": {"wallclock_seconds": 250.5, "tokens_per_second": 4900.0}, "calibrate.json": {"calibrate_time_s": 3.5},
              "quantize.json": {"quantize_time_s": 7.25}, "eval_ttt.json": {"seconds": 160.0}}
    for name, values in timing.items():
        (metrics / "timing" / name).write_text(json.dumps(values))
    s = collect(metrics)
    assert s["stage_seconds"]["train"] == 250.5 and s["train"]["tokens_per_second"] == 4900.0
    assert s["stage_seconds"]["calibrate"] == 3.5 and s["stage_seconds"]["quantize"] == 7.25
    assert s["stage_seconds"]["eval_ttt"] == 160.0
    assert not set(_read("train.json")) & {"wallclock_seconds", "tokens_per_second"}  # never in the tracked metrics


def test_summary_text_fits_one_screen(capsys):
    assert main(["summary", "--metrics", str(METRICS)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 100
    sliding, ttt, pack = _read("eval_sliding.json"), _read("eval_ttt.json"), _read("pack.json")
    assert f"sliding {sliding['val_bpb']:.4f}" in out and f"ttt {ttt['val_bpb']:.4f}" in out
    assert f"{pack['bytes_total']:,} of {pack['limit_bytes']:,}" in out
    assert f"headroom {pack['limit_bytes'] - pack['bytes_total']:,}" in out
    assert "not run" not in out


def test_summary_json(capsys):
    assert main(["summary", "--metrics", str(METRICS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(collect(METRICS)))


def test_missing_and_broken_files_are_reported_not_fatal(tmp_path, capsys):
    assert main(["summary", "--metrics", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "not run      audit.json, train.json," in out and "aggregate.json (no such file" in out
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(METRICS / "pack.json", partial)
    (partial / "eval_ttt.json").write_text("{not json")
    (partial / "train.json").write_text(json.dumps({"steps": "many", "val_loss": float("nan")}))
    s = collect(partial)
    assert s["files"]["eval_ttt.json"].startswith("unreadable") and s["files"]["eval_sliding.json"] == "not run"
    assert s["bytes"]["total"] == _read("pack.json")["bytes_total"]
    assert s["train"]["steps"] is None and s["val_loss"]["train"] is None
    text = render(s)
    assert "unreadable   eval_ttt.json (JSONDecodeError)" in text and f"{_read('pack.json')['bytes_total']:,}" in text


@pytest.mark.parametrize("over", [False, True])
def test_bytes_verdict_and_seed_spread(tmp_path, over):
    metrics = tmp_path / "m"
    metrics.mkdir()
    pack = {"bytes_model": 15_990_000, "bytes_code": 30_000 if over else 5_000, "limit_bytes": 16_000_000}
    pack["bytes_total"] = pack["bytes_model"] + pack["bytes_code"]
    (metrics / "pack.json").write_text(json.dumps(pack))
    aggregate = _read("aggregate.json")
    aggregate["seeds"] = [1337, 1338, 1339]
    aggregate["sliding"].update(val_bpb=[1.20, 1.21, 1.22], mean_bpb=1.21, std_bpb=0.01, n=3,
                                welch={"t": -3.0, "dof": 3.5, "p_value": 0.02})
    (metrics / "aggregate.json").write_text(json.dumps(aggregate))
    text = render(collect(metrics))
    assert ("OVER THE LIMIT; headroom -20,000" in text) if over else ("fits; headroom 5,000" in text)
    assert "1337, 1338, 1339" in text and "sliding 1.2100 +- 0.0100  n=3" in text and "p 0.02" in text


def test_calibration_on_the_training_ranks_is_shown_with_the_training_time(tmp_path):
    metrics = tmp_path / "metrics"
    shutil.copytree(METRICS, metrics, ignore=shutil.ignore_patterns("timing", "plots"))
    (metrics / "timing").mkdir()
    (metrics / "timing" / "train.json").write_text(json.dumps({"wallclock_seconds": 593.0, "tokens_per_second": 1.0, "calibrate_seconds": 6.5}))
    (metrics / "timing" / "calibrate.json").write_text(json.dumps({"calibrate_time_s": 0.1}))
    calibrate = json.loads((metrics / "calibrate.json").read_text())
    assert collect(metrics)["stage_seconds"]["calibrate"] == 0.1 and collect(metrics)["train"]["calibrate_seconds"] is None
    (metrics / "calibrate.json").write_text(json.dumps({**calibrate, "collected_on": "train_ranks"}))
    s = collect(metrics)
    assert s["stage_seconds"]["calibrate"] == 6.5 and s["train"]["calibrate_seconds"] == 6.5
    text = " ".join(render(s).split())  # the train row wraps
    assert "593.0s, stopped by iterations + calibrate 6.5s = 599.5s" in text


def _timed_run(tmp_path: Path, loop: float, hessians: float, ttt_seconds: float, device: dict | None) -> Path:
    metrics = tmp_path / "metrics"
    shutil.copytree(METRICS, metrics, ignore=shutil.ignore_patterns("timing", "plots"))
    for path in metrics.glob("*.json"):  # the run's recorded device is `device` alone (None: no provenance at all)
        data = json.loads(path.read_text())
        data.pop("provenance", None)
        path.write_text(json.dumps(data))
    train = json.loads((metrics / "train.json").read_text())
    (metrics / "train.json").write_text(json.dumps({**train, **({"provenance": {"device": device}} if device else {})}))
    calibrate = json.loads((metrics / "calibrate.json").read_text())
    (metrics / "calibrate.json").write_text(json.dumps({**calibrate, "collected_on": "train_ranks"}))
    (metrics / "timing").mkdir()
    timings = {"train.json": {"wallclock_seconds": loop, "calibrate_seconds": hessians, "tokens_per_second": 1.0},
               "eval_sliding.json": {"seconds": 80.0, "phases": {"precompute": 4.0, "scoring": 150.0}},
               "eval_ttt.json": {"seconds": ttt_seconds, "phases": {"precompute": 6.0}}}
    for name, values in timings.items():
        (metrics / "timing" / name).write_text(json.dumps(values))
    return metrics


def test_compliance_readings_and_the_hardware_they_were_measured_on(tmp_path, capsys):
    h100 = {"kind": "NVIDIA H100 80GB HBM3", "count": 8}
    metrics = _timed_run(tmp_path, 599.7, 6.9, 500.0, h100)
    c = collect(metrics)["compliance"]
    by_name = {r["name"]: r for r in c["readings"]}
    assert by_name["strict"]["seconds"] == pytest.approx(606.6) and by_name["strict"]["exceeds"]
    assert by_name["lenient"]["seconds"] == 599.7 and not by_name["lenient"]["exceeds"]
    assert by_name["eval sliding"]["seconds"] == 84.0 and by_name["eval ttt"]["seconds"] == 506.0
    assert by_name["eval total"]["seconds"] == 590.0 and "eval tilt" not in by_name  # no timing file: not run here
    assert c["device"] == h100 and c["note"] == "measured on NVIDIA H100 80GB HBM3 x8: the record hardware"
    assert main(["summary", "--metrics", str(metrics)]) == 0  # without --record the readings are only shown
    out = " ".join(capsys.readouterr().out.split())
    assert "train strict 606.6s > 600s, lenient 599.7s (limit 600s); eval sliding 84.0s, ttt 506.0s, total 590.0s" in out


def test_record_flag_fails_a_reading_over_its_limit_in_one_line(tmp_path, capsys):
    over = _timed_run(tmp_path / "over", 599.7, 6.9, 610.0, None)
    assert main(["summary", "--metrics", str(over), "--record"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("record check failed: strict 606.6 s > 600 s; eval ttt 616.0 s > 600 s (")
    assert "device unknown" in err
    fits = _timed_run(tmp_path / "fits", 590.0, 6.9, 500.0, {"kind": "cpu", "count": 1})
    assert main(["summary", "--metrics", str(fits), "--record"]) == 0
    assert "not 8x H100 80GB SXM: the readings are not a record's" in capsys.readouterr().out
    assert main(["summary", "--metrics", str(tmp_path / "none"), "--record"]) == 1  # nothing measured: no claim
    assert capsys.readouterr().err.startswith("record check failed: strict not measured; lenient not measured")


def test_seed_rows_name_the_tests_met(tmp_path):
    metrics = tmp_path / "m"
    metrics.mkdir()
    aggregate = _read("aggregate.json")
    aggregate["sliding"]["tests"] = {"seeds": {"meets": True}, "record": {"meets": False}, "chronological": {"meets": True}}
    (metrics / "aggregate.json").write_text(json.dumps(aggregate))
    assert "tests met: seeds, chronological" in " ".join(render(collect(metrics)).split())
