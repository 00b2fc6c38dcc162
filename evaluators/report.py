"""Render ``estimate`` results: an aligned text table, JSON records, or one self-contained HTML page.

The HTML page has inline CSS and plots as inline base64 PNGs (matplotlib's Agg canvas, no pyplot state)
and references no external URL, so it opens offline and can be attached to a cap-raise review.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence

import numpy as np
import polars as pl

FORMATS = ("table", "json", "html")
_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("estimator", "estimator"), ("value", "value"), ("ci_low", "ci_low"), ("ci_high", "ci_high"),
    ("ci_method", "ci"), ("n", "n"), ("ess", "ess"), ("max_weight", "max_w"),
    ("max_weight_share", "max_w_share"), ("clipped_share", "clipped"), ("support_violations", "violations"),
)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _clean(value: object) -> object:
    """JSON has no NaN/inf: report them as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def format_table(result: pl.DataFrame) -> str:
    """Aligned plain text, one line per estimator (numbers right-aligned)."""
    cells = [[_fmt(row.get(col)) for col, _ in _TABLE_COLUMNS] for row in result.iter_rows(named=True)]
    headers = [label for _, label in _TABLE_COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(s.ljust(w) if i in (0, 4) else s.rjust(w) for i, (s, w) in enumerate(zip(items, widths)))

    notes = sorted({row["ci_note"] for row in result.iter_rows(named=True) if row.get("ci_note")})
    out = [line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    out += [f"note: {n}" for n in notes]
    return "\n".join(out) + "\n"


def to_json(result: pl.DataFrame) -> str:
    """A JSON list of records, one per estimator."""
    records = [{k: _clean(v) for k, v in row.items()} for row in result.iter_rows(named=True)]
    return json.dumps(records, indent=2)


def _png(fig: object) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)  # type: ignore[arg-type]
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _forest_plot(result: pl.DataFrame) -> str:
    from matplotlib.figure import Figure

    rows = list(result.iter_rows(named=True))
    fig = Figure(figsize=(7, 0.5 * len(rows) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    values = np.array([r["value"] if r["value"] is not None else np.nan for r in rows], dtype=float)
    low = np.array([r["ci_low"] if r["ci_low"] is not None else np.nan for r in rows], dtype=float)
    high = np.array([r["ci_high"] if r["ci_high"] is not None else np.nan for r in rows], dtype=float)
    has_ci = np.isfinite(low) & np.isfinite(high)
    ax.errorbar(values[has_ci], y[has_ci], xerr=[values[has_ci] - low[has_ci], high[has_ci] - values[has_ci]],
                fmt="o", color="#1f5fa8", capsize=4)
    ax.plot(values[~has_ci], y[~has_ci], "o", color="#1f5fa8")
    ax.set_yticks(y, [r["estimator"] for r in rows])
    ax.set_xlabel("estimated policy value")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _weight_histogram(weights: np.ndarray) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3))
    ax = fig.add_subplot()
    ax.hist(weights, bins=50, color="#888888")
    ax.set_yscale("log")
    ax.set_xlabel("importance weight w = target_pscore / pscore")
    ax.set_ylabel("rows (log scale)")
    fig.tight_layout()
    return _png(fig)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:980px}
table{border-collapse:collapse;margin:1em 0}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}.note{color:#555;font-size:0.9em}
.warn{color:#a33;font-weight:bold}img{max-width:100%}"""


def to_html(result: pl.DataFrame, *, weights: np.ndarray | None = None, title: str = "Off-policy evaluation") -> str:
    """One self-contained page: estimates with intervals, a forest plot, a weight histogram, diagnostics."""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in _TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(col)))}</td>" for col, _ in _TABLE_COLUMNS) + "</tr>"
        for row in result.iter_rows(named=True)
    )
    notes = sorted({row["ci_note"] for row in result.iter_rows(named=True) if row.get("ci_note")})
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "<h2>Estimates</h2>", f"<table><tr>{head}</tr>{body}</table>",
        *(f"<p class='note'>{html.escape(n)}</p>" for n in notes),
        f"<img alt='forest plot' src='data:image/png;base64,{_forest_plot(result)}'>",
    ]
    violations = [r["support_violations"] for r in result.iter_rows(named=True) if r["support_violations"]]
    if violations:
        parts.append(f"<p class='warn'>{max(violations)} support-violation rows were given weight 0: "
                     "the estimates are biased.</p>")
    if weights is not None and weights.size:
        ess = float(weights.sum()) ** 2 / float(np.dot(weights, weights)) if np.any(weights) else float("nan")
        parts += [
            "<h2>Importance weights</h2>",
            f"<p>n = {weights.size}, ESS = {ess:.4g} ({ess / weights.size:.1%} of n), "
            f"max weight = {weights.max():.4g}, mean weight = {weights.mean():.4g} (≈ 1 when the target "
            "policy's support is covered)</p>",
            f"<img alt='weight histogram' src='data:image/png;base64,{_weight_histogram(weights)}'>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def render(result: pl.DataFrame, fmt: str, *, weights: np.ndarray | None = None) -> str:
    """Render in ``fmt`` (table, json or html)."""
    if fmt == "table":
        return format_table(result)
    if fmt == "json":
        return to_json(result) + "\n"
    if fmt == "html":
        return to_html(result, weights=weights)
    raise ValueError(f"parameter 'format' must be one of {', '.join(FORMATS)}, got '{fmt}'")
