"""`pgolf exp table`: experiments side by side from `dvc exp show --json`.

tests/fixtures/exp_show.json is real `dvc exp show --json` output of tests/exp_repo.py (pgolf's full
params.yaml, the committed run's metrics, two experiments and a queued one); the slow test builds
that project again and runs the command against live DVC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.cli import main
from pgolf.errors import PgolfError
from pgolf.exptable import differing_params, render, rows_from_json

FIXTURE = Path(__file__).parent / "fixtures" / "exp_show.json"


def _rows():
    return rows_from_json(json.loads(FIXTURE.read_text()))


def test_rows_follow_dvc_order_with_their_metrics():
    rows = _rows()
    assert [r.label.strip() for r in rows] == ["workspace", "main", "layers-3-lzma", "stride-64", "layers-5-queued"]
    assert [r.kind for r in rows] == ["workspace", "commit", "experiment", "experiment", "experiment"]
    main_row = rows[1]
    raw = json.loads(FIXTURE.read_text())[1]["data"]["metrics"]  # the commit `main`, as DVC wrote it
    assert main_row.metrics == {"sliding bpb": raw["metrics/eval_sliding.json"]["data"]["val_bpb"],
                                "ttt bpb": raw["metrics/eval_ttt.json"]["data"]["val_bpb"],
                                "bytes_total": raw["metrics/pack.json"]["data"]["bytes_total"]}
    assert 1.0 < main_row.metrics["sliding bpb"] < 2.0 and main_row.metrics["bytes_total"] > 100_000
    assert rows[-1].state == "queued" and rows[-1].metrics["sliding bpb"] is None
    assert rows[3].params["eval_sliding.stride"] == 64 and rows[1].params["eval_sliding.stride"] == 128


def test_only_differing_params_become_columns():
    rows = _rows()
    assert differing_params(rows) == ["train.model.layers", "pack.compressor", "eval_sliding.stride"]
    assert len(rows[1].params) > 100  # pgolf's whole params.yaml is in there


def test_table_is_compact_and_marks_the_best(capsys):
    assert main(["exp", "table", "--from", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    header = lines[0].split()
    assert header[:5] == ["Experiment", "sliding", "bpb", "ttt", "bpb"] and header[-3:] == ["layers", "compressor", "stride"]
    stride64 = next(line for line in lines if line.strip().startswith("stride-64"))
    best = min(r.metrics["sliding bpb"] for r in _rows() if r.metrics["sliding bpb"] is not None)
    assert f"{best:.4f}*" in stride64 and stride64.split()[-1] == "64"
    assert "layers-5-queued (queued)" in out
    assert "stride = eval_sliding.stride" in out


def test_narrow_width_splits_params_into_blocks_and_param_adds_a_column():
    text = render(_rows(), width=70)
    blocks = [b for b in text.split("\n\n") if b.startswith("Experiment")]
    assert len(blocks) == 2 and all(max(map(len, b.splitlines())) <= 70 for b in blocks)
    assert all(len(b.splitlines()) == 2 + 5 for b in blocks)  # header, rule, one line per row
    wide = render(_rows(), keys=differing_params(_rows()) + ["train.seed"])
    assert "seed" in wide.splitlines()[0]


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(PgolfError, match="expected a list"):
        rows_from_json(json.loads(bad.read_text()))
    proc = subprocess.run([sys.executable, "-m", "pgolf", "exp", "table", "--from", str(tmp_path / "nope.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {tmp_path / 'nope.json'}: file not found"
    proc = subprocess.run([sys.executable, "-m", "pgolf", "exp", "table"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: not inside a DVC repository")


@pytest.mark.slow
def test_live_dvc_exp_show(tmp_path):
    from exp_repo import build

    repo = build(tmp_path / "repo")
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "pgolf", "exp", "table"], cwd=repo / "base", env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    live = proc.stdout.splitlines()
    fixture = render(_rows()).splitlines()
    assert live[0] == fixture[0] and len(live) == len(fixture)
    assert [line.split()[0] for line in live[2:7]] == [line.split()[0] for line in fixture[2:7]]
