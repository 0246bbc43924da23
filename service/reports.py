"""A sweep's report: one row per run (the varied values, lambda, quality, penalty, time), as JSON,
as a markdown table, and as a figure (quality against the penalty on samples, and the sample
grids side by side).

Rows are plain dicts built from a run's spec and evaluation, so the bench script builds the same
table and figure in-process, without the service. Matplotlib runs headless through the Agg
canvas on a `Figure` of its own (no pyplot state, safe in the api's threads).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

ROW_KEYS = ("fcd", "confidence", "classifier_score", "penalty_samples", "penalty_real", "n_samples")


def row(*, run_id: str, status: str, values: dict[str, Any], spec: dict[str, Any],
        evaluation: dict[str, Any] | None, seconds: float | None, error: str | None) -> dict[str, Any]:
    """One report row; the evaluation numbers are None until the run has them (or when eval is off)."""
    ev = evaluation or {}
    penalty = ev.get("penalty") or {}
    if error is None and ev.get("error"):
        error = f"evaluation: {ev['error']}"
    return {
        "run_id": run_id, "status": status, "values": values, "lambda": spec.get("lambda"),
        "seed": (spec.get("train") or {}).get("seed"), "baseline": not spec.get("lambda"),
        "fcd": ev.get("fcd"), "confidence": ev.get("confidence"), "classifier_score": ev.get("classifier_score"),
        "penalty_samples": penalty.get("samples"), "penalty_real": penalty.get("real"),
        "n_samples": ev.get("n_samples"), "seconds": None if seconds is None else round(seconds, 1), "error": error,
    }


def reference(evaluations: list[dict[str, Any] | None]) -> dict[str, float | None]:
    """Real-data numbers, from the first run that has them (the same real subset for every run)."""
    out: dict[str, float | None] = dict.fromkeys(
        ("penalty_real", "confidence", "classifier_score", "classifier_accuracy"))
    for ev in evaluations:
        if not ev:
            continue
        if out["penalty_real"] is None and ev.get("penalty"):
            out["penalty_real"] = ev["penalty"].get("real")
        ref = ev.get("reference") or {}
        for key in ("confidence", "classifier_score", "classifier_accuracy"):
            if out[key] is None:
                out[key] = ref.get(key)
    return out


def label(values: dict[str, Any]) -> str:
    """"λ=0.1, estimator.kind=ddim": how a point is named in tables and on the figure."""
    return ", ".join(f"{'λ' if key == 'lambda' else key}={_fmt(v)}" for key, v in values.items()) or "base"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(keys: list[str], rows: list[dict[str, Any]], ref: dict[str, float | None]) -> str:
    """The table as GitHub markdown, with a last line for real data."""
    varied = [k for k in keys if k != "lambda"]
    head = ["run", *varied, "lambda", "FCD", "confidence", "penalty (samples)", "penalty (real)", "seconds",
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run_id"], *(_fmt(r["values"].get(k)) for k in varied), _fmt(r["lambda"]), _fmt(r["fcd"]),
                 _fmt(r["confidence"]), _fmt(r["penalty_samples"]), _fmt(r["penalty_real"]), _fmt(r["seconds"]),
                 r["status"] + (f" ({r['error']})" if r.get("error") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    real = ["real data", *([""] * len(varied)), "", "", _fmt(ref.get("confidence")), _fmt(ref.get("penalty_real")),
            _fmt(ref.get("penalty_real")), "", ""]
    lines.append("| " + " | ".join(real) + " |")
    return "\n".join(lines) + "\n"


def _ci(estimate: dict[str, Any] | None, scale: float = 1.0, unit: str = "") -> str:
    if not estimate or estimate.get("value") is None:
        return "–"
    lo, hi = (scale * v for v in estimate["ci"])
    return f"{scale * estimate['value']:.4g}{unit} [{lo:.4g}, {hi:.4g}]"


def points_markdown(points: list[dict[str, Any]], statement: str, ref: dict[str, float | None]) -> str:
    """One row per point across its seeds (mean and 95% interval), its change against the lambda = 0
    baseline and the verdict; then the penalty on real data and the recommended setting."""
    head = ["point", "seeds", "penalty (samples)", "change vs baseline", "FCD", "FCD change", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        v = p.get("verdict")
        said = "baseline" if p["baseline"] else (f"{v['penalty']}, quality {v['quality']}" if v else "–")
        cells = [p["label"], f"{p['evaluated']}/{len(p['run_ids'])}", _ci(p.get("penalty")),
                 _ci(p.get("relative_change"), 100, "%"), _ci(p.get("fcd")), _ci(p.get("fcd_difference")), said]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| real data | | {_fmt(ref.get('penalty_real'))} | | | | |")
    return "\n".join(lines) + f"\n\n{statement}\n"


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows that differ only in lambda form one curve (sorted by lambda)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        rest = {k: v for k, v in r["values"].items() if k != "lambda"}
        out.setdefault(label(rest) if rest else "", []).append(r)
    for members in out.values():
        members.sort(key=lambda r: r["lambda"] if r["lambda"] is not None else math.inf)
    return out


def _decode_png(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("L") if im.mode in ("L", "1", "P", "LA") else im.convert("RGB"))


def figure_png(title: str, rows: list[dict[str, Any]], grids: list[bytes | None],
               ref: dict[str, float | None], analysis: dict[str, Any] | None = None) -> bytes:
    """Top: FCD and confidence against the penalty on samples, one curve per setting across lambda,
    real data as a dashed line; with `analysis` (service/sweep_verdicts.analyse) the FCD panel is
    the Pareto view over points (mean over seeds, intervals, best ringed). Below: each run's
    preview grid, labelled by its point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(rows), 1)
    grid_rows = math.ceil(n / 6)
    cols = math.ceil(n / grid_rows)
    fig = Figure(figsize=(max(10.0, 2.2 * cols), 4.5 + 2.4 * grid_rows), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.5, 2.4 * grid_rows])
    axes = top.subplots(1, 2)
    panels = (("fcd", "FCD to real data (lower: closer)"), ("confidence", "classifier confidence (higher: clearer)"))
    for ax, (metric, ylabel) in zip(axes, panels):
        if metric == "fcd" and analysis is not None:
            _draw_pareto(ax, analysis["comparisons"], analysis, ref.get("penalty_real"), analysis.get("baseline"))
            ax.set_title(analysis["statement"][:90], fontsize=8)
            continue
        plotted = False
        for group, members in _groups(rows).items():
            pts = [(r["penalty_samples"], r[metric], r) for r in members
                   if r["penalty_samples"] is not None and r[metric] is not None]
            if not pts:
                continue
            plotted = True
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=group or None)
            for x, y, r in pts:
                ax.annotate(f"λ={_fmt(r['lambda'])}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if ref.get("penalty_real") is not None:
            ax.axvline(ref["penalty_real"], ls="--", color="grey", label="real data")
        if metric == "confidence" and ref.get("confidence") is not None:
            ax.axhline(ref["confidence"], ls=":", color="grey")
        if not plotted:
            ax.text(0.5, 0.5, "no evaluation yet\n(runs pending, or evaluation off)", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
        ax.set_xlabel("penalty on samples (the run's regularizer)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    cells = bottom.subplots(grid_rows, cols, squeeze=False)
    for i, ax in enumerate(cells.flat):
        ax.axis("off")
        if i >= len(rows):
            continue
        r = rows[i]
        seed = "" if r.get("seed") is None else f", seed {r['seed']}"
        ax.set_title(f"{label(r['values'])}{seed}\n{r['status']}", fontsize=8)
        if grids[i] is not None:
            image = _decode_png(grids[i])
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.text(0.5, 0.5, "no samples yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _draw_pareto(ax: Any, points: list[dict[str, Any]], best: dict[str, Any], real_penalty: float | None,
                 baseline: dict[str, Any] | None = None) -> None:
    """Each point's penalty on samples against its FCD with their 95% intervals, the Pareto front
    joined, the best setting ringed, the lambda = 0 baseline as a grey square and the penalty on
    real data as a dashed line."""
    drawn = [p for p in points if p["comparison"].get("penalty") and p["comparison"].get("fcd")]
    for p in drawn:
        _errorbar(ax, p["comparison"]["penalty"]["run"], p["comparison"]["fcd"]["run"], p["label"], "o", "tab:blue")
        if p["label"] == best.get("best"):
            pen, fcd = p["comparison"]["penalty"]["run"], p["comparison"]["fcd"]["run"]
            ax.plot([pen["value"]], [fcd["value"]], "o", ms=16, mfc="none", color="tab:red", label=f"best: {p['label']}")
    if baseline and baseline.get("penalty") and baseline.get("fcd"):
        _errorbar(ax, baseline["penalty"], baseline["fcd"], f"{baseline['label']} (baseline)", "s", "grey")
    front = sorted((p["comparison"]["penalty"]["run"]["value"], p["comparison"]["fcd"]["run"]["value"])
                   for p in drawn if p["label"] in best.get("pareto", []))
    if front:
        ax.plot(*zip(*front), "-", color="tab:blue", alpha=0.5, label="Pareto front")
    if real_penalty is not None:
        ax.axvline(real_penalty, ls="--", color="grey", label="penalty on real data")
    if not drawn:
        ax.text(0.5, 0.5, "no compared points yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xlabel("penalty on samples (mean over seeds, 95% CI)")
    ax.set_ylabel("FCD to real data (95% CI; lower: closer)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _errorbar(ax: Any, pen: dict[str, Any], fcd: dict[str, Any], text: str, marker: str, color: str) -> None:
    x, y = pen["value"], fcd["value"]
    ax.errorbar(x, y, xerr=[[x - pen["ci"][0]], [pen["ci"][1] - x]], yerr=[[y - fcd["ci"][0]], [fcd["ci"][1] - y]],
                fmt=marker, color=color, capsize=3)
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)


def pareto_png(title: str, points: list[dict[str, Any]], best: dict[str, Any], real_penalty: float | None,
               baseline: dict[str, Any] | None = None) -> bytes:
    """The sweep's trade-off alone (_draw_pareto). points and best are verdict.best_setting's input and
    output, so the figure shows exactly what the report names."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_title(title)
    _draw_pareto(ax, points, best, real_penalty, baseline)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()
