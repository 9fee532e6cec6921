"""Offline plotting: the DVC template, curve PNGs and the bpb table."""

from __future__ import annotations

import json
import re

import pytest

from pgolf.errors import DataError
from pgolf.plots import offline_template, read_curve, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_offline_template_inlines_vega_and_loads_nothing_remote():
    html = offline_template()
    assert html.count("{plot_divs}") == 1
    assert "vegaEmbed" in html or "vega-embed" in html
    assert not re.search(r"<script[^>]*\ssrc=", html)
    assert "{scripts}" not in html  # DVC would otherwise insert its CDN script tags there


def _live(tmp_path):
    metrics = tmp_path / "live" / "plots" / "metrics"
    (metrics / "train").mkdir(parents=True)
    (metrics / "train" / "loss.tsv").write_text("timestamp\tstep\tloss\n1\t0\t6.9\n2\t10\t5.1\n")
    (metrics / "lr_scale.tsv").write_text("timestamp\tstep\tlr_scale\n1\t0\t1.0\n2\t10\t0.5\n")
    return tmp_path / "live"


def _metrics(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "eval_sliding.json").write_text(json.dumps({"val_bpb": 2.0, "quantization_gap": 0.25}))
    (metrics / "eval_ttt.json").write_text(json.dumps({"val_bpb": 1.9, "val_bpb_no_ttt": 2.1}))
    return metrics


def test_report_writes_png_and_table(tmp_path):
    result = write_report(_live(tmp_path), _metrics(tmp_path), tmp_path / "out")
    assert (tmp_path / "out" / "train_curve.png").read_bytes()[:8] == PNG_MAGIC
    table = json.loads((tmp_path / "out" / "eval_bpb.json").read_text())
    assert table == result["eval_bpb"]
    assert [row["val_bpb"] for row in table] == [1.75, 2.0, 2.1, 1.9]


def test_report_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="no DVCLive curves"):
        write_report(tmp_path / "nothing", _metrics(tmp_path), tmp_path / "out")
    bad = tmp_path / "bad.tsv"
    bad.write_text("timestamp\tstep\ta\tb\n1\t0\t1\t2\n")
    with pytest.raises(DataError, match="one value column"):
        read_curve(bad)
    live = _live(tmp_path / "x")
    with pytest.raises(DataError, match="eval_ttt.json"):
        metrics = tmp_path / "m"
        metrics.mkdir()
        (metrics / "eval_sliding.json").write_text(json.dumps({"val_bpb": 2.0, "quantization_gap": 0.1}))
        write_report(live, metrics, tmp_path / "out2")
