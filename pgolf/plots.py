"""Plots that work offline: an HTML template for `dvc plots show`, PNG curves, the bpb table.

`dvc plots show` normally loads vega from a CDN, which leaves a blank page without a network.
`write_offline_template` inlines vega, vega-lite and vega-embed (shipped as plain JS files by the
pinned `django-js-lib-vega-embed` wheel) into a template that `.dvc/config` points at.

val_bpb per evaluation method differs by hundredths of a bit, so it is drawn as dots on an axis
spanning the data (a bar chart must start at 0 and hides the differences): in the PNG here and in
the vega template `templates/eval_bpb.json` that `dvc plots show` uses. Curves carry markers, so a
curve with one point (the final val_loss of a short run) is still visible.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from pgolf.errors import DataError
from pgolf.eval.methods import METHODS, report_rows, stage_methods
from pgolf.io import read_json, read_metric, write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

VEGA_PACKAGE = "js_lib_vega_embed"
VEGA_SCRIPTS = ("vega5.js", "vega-lite5.js", "vega-embed6.js")
DVC_TEMPLATE_PATH = Path(".dvc") / "plots" / "offline.html"  # .dvc/config: plots.html_template


def offline_template() -> str:
    """An HTML page with `{plot_divs}` for DVC and the vega scripts inlined."""
    scripts = []
    for name in VEGA_SCRIPTS:
        source = resources.files(VEGA_PACKAGE).joinpath("static", VEGA_PACKAGE, name)
        try:
            code = source.read_text(encoding="utf-8")
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise DataError(f"vega script {name} not found in package {VEGA_PACKAGE}: reinstall pgolf ({exc})") from None
        # A literal "</script>" inside the code would end the tag early.
        scripts.append("<script>\n" + code.replace("</script>", "<\\/script>") + "\n</script>")
    head = "\n".join(scripts)
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>pgolf plots</title>\n"
        f"{head}\n<style>body {{ font-family: sans-serif; }} table {{ border-spacing: 15px; }}</style>\n"
        "</head>\n<body>\n{plot_divs}\n</body>\n</html>\n"
    )


def write_offline_template(path: str | Path = DVC_TEMPLATE_PATH) -> Path:
    path = Path(path)
    write_bytes_atomic(path, offline_template().encode("utf-8"))
    return path


def read_curve(tsv_path: str | Path) -> tuple[list[float], list[float], str]:
    """A DVCLive TSV (columns: timestamp, step, <name>) -> (steps, values, name)."""
    tsv_path = Path(tsv_path)
    try:
        with tsv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except FileNotFoundError:
        raise DataError(f"{tsv_path}: curve file not found") from None
    if not rows:
        return [], [], tsv_path.stem
    names = [k for k in rows[0] if k not in ("timestamp", "step")]
    if "step" not in rows[0] or len(names) != 1:
        raise DataError(f"{tsv_path}: expected columns timestamp, step and one value column")
    name = names[0]
    return [float(r["step"]) for r in rows], [float(r[name]) for r in rows], name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
    finally:
        _pyplot().close(fig)
    tmp.replace(out_png)
    return out_png


def curves_figure(tsv_paths: Iterable[str | Path], title: str = "training", labels: Iterable[str] | None = None):
    """One panel per curve, against step, each point marked when the curve is short."""
    tsv_paths = list(tsv_paths)
    names = list(labels) if labels is not None else [None] * len(tsv_paths)
    curves = [(s, v, label or name) for p, label in zip(tsv_paths, names) for s, v, name in [read_curve(p)]]
    curves = [c for c in curves if c[0]]
    if not curves:
        raise DataError("no curve has any point to draw")
    fig, axes = _pyplot().subplots(len(curves), 1, figsize=(7, 2.6 * len(curves)), sharex=True, squeeze=False)
    for ax, (steps, values, name) in zip(axes[:, 0], curves):
        ax.plot(steps, values, lw=1.2, marker="o", ms=_marker_size(len(steps)))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_curves_png(
    tsv_paths: Iterable[str | Path], out_png: str | Path, title: str = "training", labels: Iterable[str] | None = None
) -> Path:
    """`curves_figure` as a PNG."""
    return _save(curves_figure(tsv_paths, title, labels), out_png)


def _marker_size(points: int) -> float:
    """Markers that show every point of a short curve and stay out of the way on a long one."""
    if points <= 1:
        return 6.0
    return 4.0 if points <= 60 else 0.0


def zoomed_limits(values: list[float], pad_fraction: float = 0.15, min_span: float = 0.002) -> tuple[float, float]:
    """Axis limits around `values` (not from 0): the data's span plus a margin on each side."""
    if not values:
        raise DataError("no values to draw")
    low, high = min(values), max(values)
    span = max(high - low, min_span)
    pad = span * pad_fraction
    return low - pad, high + pad + span * 0.12  # room on the right for the value labels


def bpb_figure(rows: list[dict], title: str = "val_bpb by evaluation method"):
    """A dot per method on an axis zoomed to the data, each labelled with its value (lower is better)."""
    values = [float(r["val_bpb"]) for r in rows]
    labels = [str(r["method"]) for r in rows]
    fig, ax = _pyplot().subplots(figsize=(8, 0.5 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    ax.scatter(values, ys, s=45, zorder=3)
    for x, y in zip(values, ys):
        ax.annotate(f"{x:.4f}", (x, y), xytext=(7, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(ys, labels)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(*zoomed_limits(values))
    ax.set_xlabel("val_bpb (axis zoomed to the data; lower is better)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def write_bpb_png(rows: list[dict], out_png: str | Path) -> Path:
    """`bpb_figure` as a PNG."""
    return _save(bpb_figure(rows), out_png)


RD_KEYS = ("method", "bytes_total", "val_bpb_predicted", "val_bpb")


def read_rd_curve(path: str | Path) -> list[dict]:
    """The rate-distortion points of stage `rd` (metrics/plots/rd.json); DataError naming the file when malformed."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: rate-distortion curve not found (did the rd stage run?)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(RD_KEYS) <= set(r) for r in rows):
        raise DataError(f"{path}: expected a list of points with keys {', '.join(RD_KEYS)}")
    return rows


def rd_figure(rows: list[dict], title: str = "rate-distortion: val_bpb vs bytes_total"):
    """One line per method through its predicted points, measured points as filled diamonds."""
    fig, ax = _pyplot().subplots(figsize=(7.5, 4.6))
    if not rows:  # the stage ran with rd.methods: [] (a figure still, so that the output exists)
        ax.text(0.5, 0.5, "no rate-distortion curve: params rd.methods is empty", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        line = sorted((r for r in rows if r["method"] == method), key=lambda r: r["bytes_total"])
        color = f"C{i}"
        ax.plot([r["bytes_total"] for r in line], [r["val_bpb_predicted"] for r in line], color=color, lw=1.3, marker="o", ms=3.5,
                label=f"{method} (predicted)")
        real = [r for r in line if r["val_bpb"] is not None]
        if real:
            ax.scatter([r["bytes_total"] for r in real], [r["val_bpb"] for r in real], color=color, marker="D", s=40, zorder=3,
                       label=f"{method} (measured)")
    ax.set_xlabel("bytes_total (model + code)")
    ax.set_ylabel("val_bpb, sliding window (lower is better)")
    ax.xaxis.set_major_formatter(_pyplot().FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def write_bpb_table(rows: list[dict], out_json: str | Path) -> Path:
    """Plot data for `dvc plots`: a list of {method, val_bpb} records."""
    for row in rows:
        if set(row) != {"method", "val_bpb"}:
            raise DataError(f"bpb table rows need exactly 'method' and 'val_bpb', got {sorted(row)}")
    write_json_atomic(out_json, rows)
    return Path(out_json)


def write_report(live_dir: str | Path, metrics_dir: str | Path, out_dir: str | Path, rd_curve: str | Path | None = None) -> dict:
    """The training-curve PNG, the bpb-per-method table and, given stage rd's points, the
    rate-distortion PNG (out_dir/rd.png) from a finished pipeline's outputs."""
    live_dir, metrics_dir, out_dir = Path(live_dir), Path(metrics_dir), Path(out_dir)
    root = live_dir / "plots" / "metrics"
    # Losses first, then the rest; each panel is labelled by its DVCLive name (e.g. "val/loss").
    curves = sorted(root.rglob("*.tsv"), key=lambda p: ("loss" not in p.stem, str(p)))
    if not curves:
        raise DataError(f"{live_dir}: no DVCLive curves under plots/metrics (did the train stage run?)")
    labels = [p.relative_to(root).with_suffix("").as_posix() for p in curves]
    png = write_curves_png(curves, out_dir / "train_curve.png", title="training curves", labels=labels)
    metrics = {}
    for name in stage_methods():  # the evaluation registry decides the rows
        path = metrics_dir / f"eval_{name}.json"
        keys = {"val_bpb", METHODS[name].gap_metric}
        metrics[name] = {key: read_metric(path, key) for key in keys}
        gap = read_json(path, "metrics file").get("quantization_gap")  # null when the gap was not scored (eval gap: off)
        metrics[name]["quantization_gap"] = None if gap is None else read_metric(path, "quantization_gap")
    rows = report_rows(metrics)
    table = write_bpb_table(rows, out_dir / "eval_bpb.json")
    bpb_png = write_bpb_png(rows, out_dir / "eval_bpb.png")
    log.info("train_curve_png: %s", png)
    log.info("eval_bpb_table: %s", table)
    log.info("eval_bpb_png: %s", bpb_png)
    out = {"train_curve_png": str(png), "eval_bpb_png": str(bpb_png), "eval_bpb": rows}
    if rd_curve is not None:
        points = read_rd_curve(rd_curve)
        out["rd_png"] = str(_save(rd_figure(points), out_dir / "rd.png"))
        log.info("rd_png: %s (%d points)", out["rd_png"], len(points))
    return out
