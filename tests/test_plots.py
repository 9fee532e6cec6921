"""Offline plotting: the DVC template, curve PNGs and the bpb table."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from pgolf.errors import DataError
from pgolf.plots import bpb_figure, curves_figure, offline_template, read_curve, write_report, zoomed_limits

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "templates" / "eval_bpb.json"

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
    (metrics / "eval_ttt.json").write_text(json.dumps({"val_bpb": 1.9, "val_bpb_no_ttt": 2.1, "quantization_gap": 0.2}))
    (metrics / "eval_tilt.json").write_text(json.dumps({"val_bpb": 1.95, "quantization_gap": 0.15}))
    return metrics


def test_report_writes_png_and_table(tmp_path):
    result = write_report(_live(tmp_path), _metrics(tmp_path), tmp_path / "out")
    assert (tmp_path / "out" / "train_curve.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "out" / "eval_bpb.png").read_bytes()[:8] == PNG_MAGIC
    table = json.loads((tmp_path / "out" / "eval_bpb.json").read_text())
    assert table == result["eval_bpb"]
    # The evaluation registry decides the rows: per stage method, checkpoint and artifact on the
    # score the quantization gap compares, then the method's val_bpb.
    assert [(row["method"], row["val_bpb"]) for row in table] == [
        ("sliding: checkpoint", 1.75), ("sliding: artifact", 2.0),
        ("ttt: checkpoint, no TTT", pytest.approx(1.9)), ("ttt: artifact, no TTT", 2.1), ("ttt: artifact", 1.9),
        ("tilt: checkpoint", pytest.approx(1.8)), ("tilt: artifact", 1.95),
    ]


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


def test_curves_mark_their_points_so_a_single_point_shows(tmp_path):
    one = tmp_path / "loss.tsv"
    one.write_text("timestamp\tstep\tloss\n1\t12\t4.05\n")
    long = tmp_path / "lr.tsv"
    long.write_text("timestamp\tstep\tlr\n" + "".join(f"1\t{i}\t{1 - i / 300}\n" for i in range(300)))
    fig = curves_figure([one, long])
    (single,), (dense,) = (ax.get_lines() for ax in fig.axes)
    assert single.get_marker() == "o" and single.get_markersize() >= 4
    assert dense.get_markersize() == 0  # 300 points: the line alone


def _committed_rows():
    return json.loads((REPO / "metrics" / "plots" / "eval_bpb.json").read_text())


def test_bpb_png_axis_is_zoomed_to_the_data():
    rows = _committed_rows()
    values = [r["val_bpb"] for r in rows]
    low, high = bpb_figure(rows).axes[0].get_xlim()
    assert low <= min(values) and high >= max(values)
    # The axis spans the data, not 0..max: the methods' spread fills a good part of it.
    assert (max(values) - min(values)) / (high - low) > 0.5
    assert zoomed_limits([1.0, 1.0])[0] < 1.0 < zoomed_limits([1.0, 1.0])[1]


def _filled_template(rows):
    """The vega-lite spec DVC makes from templates/eval_bpb.json (DVC's own renderer)."""
    from dvc_render.vega import VegaRenderer
    from dvc_render.vega_templates import get_template

    points = [dict(row, rev="workspace") for row in rows]
    props = {"x": "val_bpb", "y": "method", "title": "val_bpb by evaluation method", "template": get_template(str(TEMPLATE))}
    return VegaRenderer(points, "metrics/plots/eval_bpb.json", **props).get_filled_template()


def test_vega_template_draws_dots_on_a_zoomed_axis(tmp_path):
    rows = _committed_rows()
    spec = _filled_template(rows)
    assert spec["encoding"]["x"]["field"] == "val_bpb" and spec["encoding"]["x"]["scale"]["zero"] is False
    assert spec["layer"][0]["mark"]["type"] == "point"
    assert [v["val_bpb"] for v in spec["data"]["values"]] == [r["val_bpb"] for r in rows]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed: the vega render check needs it")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    vega_dir = resources.files("js_lib_vega_embed").joinpath("static", "js_lib_vega_embed")
    proc = subprocess.run([node, str(REPO / "tests" / "fixtures" / "vega_render.js"), str(vega_dir), str(tmp_path / "spec.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout.strip().splitlines()[-1])
    values = [r["val_bpb"] for r in rows]
    low, high = rendered["domain"]
    assert rendered["symbols"] == len(rows)
    assert low > 0.9 * min(values) and high < 1.1 * max(values), rendered  # not from 0 like a bar chart


def _rd_points():
    return [{"method": "gptq", "bytes_total": 300_000, "val_bpb_predicted": 1.66, "val_bpb": 1.665, "settings": "a"},
            {"method": "gptq", "bytes_total": 400_000, "val_bpb_predicted": 1.63, "val_bpb": None, "settings": "b"},
            {"method": "rtn", "bytes_total": 350_000, "val_bpb_predicted": 1.70, "val_bpb": 1.71, "settings": "c"}]


def test_report_draws_the_rate_distortion_curve_one_line_per_method(tmp_path):
    from pgolf.plots import rd_figure

    curve = tmp_path / "rd.json"
    curve.write_text(json.dumps(_rd_points()))
    result = write_report(_live(tmp_path), _metrics(tmp_path), tmp_path / "out", curve)
    assert Path(result["rd_png"]).read_bytes()[:8] == PNG_MAGIC
    fig = rd_figure(_rd_points())
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["gptq (predicted)", "rtn (predicted)"]
    assert list(ax.get_lines()[0].get_xdata()) == [300_000, 400_000]  # sorted by bytes
    assert len(ax.collections) == 2  # the measured points of each line
    empty = write_report(_live(tmp_path / "e"), _metrics(tmp_path / "e"), tmp_path / "out2", _write(tmp_path / "empty.json", []))
    assert Path(empty["rd_png"]).read_bytes()[:8] == PNG_MAGIC  # rd.methods: [] still leaves the declared output


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_a_malformed_rate_distortion_curve_is_named(tmp_path):
    from pgolf.plots import read_rd_curve

    with pytest.raises(DataError, match="rd.json: rate-distortion curve not found"):
        read_rd_curve(tmp_path / "rd.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json: not JSON"):
        read_rd_curve(tmp_path / "bad.json")
    with pytest.raises(DataError, match="keys method, bytes_total"):
        read_rd_curve(_write(tmp_path / "rows.json", [{"method": "gptq"}]))


def test_the_rd_template_draws_a_line_per_method_and_revision():
    spec = json.loads((REPO / "templates" / "rd.json").read_text())
    line, dots = spec["layer"]
    assert spec["encoding"]["color"]["field"] == "method"
    assert line["encoding"]["strokeDash"]["field"] == "rev" and line["encoding"]["y"]["field"] == "<DVC_METRIC_Y>"
    assert dots["encoding"]["y"]["field"] == "val_bpb" and "isValid(datum.val_bpb)" in dots["transform"][0]["filter"]


def test_report_leaves_out_the_checkpoint_row_when_the_gap_was_not_scored(tmp_path):
    metrics = _metrics(tmp_path)
    (metrics / "eval_sliding.json").write_text(json.dumps({"val_bpb": 2.0, "quantization_gap": None}))
    rows = write_report(_live(tmp_path), metrics, tmp_path / "out")["eval_bpb"]
    assert [r["method"] for r in rows if r["method"].startswith("sliding")] == ["sliding: artifact"]
