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
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from evaluators.verdict import UNRELIABLE, split_reasons

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("table", "json", "html")
_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("estimator", "estimator"), ("value", "value"), ("ci_low", "ci_low"), ("ci_high", "ci_high"),
    ("ci_method", "ci"), ("n", "n"), ("ess", "ess"), ("max_weight", "max_w"),
    ("max_weight_share", "max_w_share"), ("clipped_share", "clipped"), ("support_violations", "violations"),
    ("verdict", "verdict"),
)
_LEFT_ALIGNED = frozenset({"estimator", "ci_method", "verdict"})
# The numbers an unreliable verdict discredits: bracketed in the text table, struck through in the HTML.
_DISCREDITED = frozenset({"value", "ci_low", "ci_high"})
_OK_COLOUR, _UNRELIABLE_COLOUR = "#1f5fa8", "#9a9a9a"
# The HTML puts the verdict right beside the value and interval it judges (the text table keeps it last: it runs free).
_HTML_COLUMNS = (*_TABLE_COLUMNS[:4], _TABLE_COLUMNS[-1], *_TABLE_COLUMNS[4:-1])


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _clean(value: object) -> object:
    """JSON has no NaN/inf: report them as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _unreliable(row: dict[str, object]) -> bool:
    return row.get("verdict") == UNRELIABLE


def _verdict_text(row: dict[str, object]) -> str:
    """"ok", or "UNRELIABLE: <reasons>" (a result without verdicts, e.g. from an older run: "-")."""
    if row.get("verdict") is None:
        return "-"
    return f"UNRELIABLE: {row.get('reasons') or 'no reason given'}" if _unreliable(row) else str(row["verdict"])


def _cell(row: dict[str, object], column: str) -> str:
    if column == "verdict":
        return _verdict_text(row)
    text = _fmt(row.get(column))
    return f"[{text}]" if column in _DISCREDITED and _unreliable(row) and text != "-" else text


def format_table(result: pl.DataFrame) -> str:
    """Aligned plain text, one line per estimator (numbers right-aligned).

    An unreliable row shows its value and interval in brackets and "UNRELIABLE: <reasons>" in the verdict column.
    """
    rows = list(result.iter_rows(named=True))
    cells = [[_cell(row, col) for col, _ in _TABLE_COLUMNS] for row in rows]
    headers = [label for _, label in _TABLE_COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])  # the verdict (with its reasons) comes last and runs free: no padding to its width

    def line(items: Sequence[str]) -> str:
        return "  ".join(s.ljust(w) if col in _LEFT_ALIGNED else s.rjust(w)
                         for (col, _), s, w in zip(_TABLE_COLUMNS, items, widths)).rstrip()

    notes = sorted({row["ci_note"] for row in rows if row.get("ci_note")})
    out = [line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    out += [f"note: {n}" for n in notes]
    unreliable = sum(_unreliable(row) for row in rows)
    if unreliable:
        out.append(f"note: {unreliable} of {len(rows)} estimate(s) UNRELIABLE: bracketed values are not evidence "
                   "(thresholds: docs/verdicts.md)")
    return "\n".join(out) + "\n"


def to_json(result: pl.DataFrame) -> str:
    """A JSON list of records, one per estimator; ``reasons`` is a list of strings ([] when ok)."""
    records = []
    for row in result.iter_rows(named=True):
        record = {k: _clean(v) for k, v in row.items()}
        if "reasons" in record:
            record["reasons"] = split_reasons(row["reasons"])
        records.append(record)
    return json.dumps(records, indent=2)


def _png(fig: object) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)  # type: ignore[arg-type]
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _column(rows: list[dict[str, object]], key: str) -> np.ndarray:
    return np.array([r[key] if r.get(key) is not None else np.nan for r in rows], dtype=float)


def _forest_plot(result: pl.DataFrame) -> str:
    return _png(forest_figure(result))


def forest_figure(result: pl.DataFrame) -> Figure:
    """Point and interval per estimator: ok rows as blue error bars; unreliable rows as a grey hollow point over
    a grey hatched band (the interval), their labels greyed and marked, so they cannot be read as evidence."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = list(result.iter_rows(named=True))
    fig = Figure(figsize=(8, 0.5 * len(rows) + 1.6))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    values, low, high = _column(rows, "value"), _column(rows, "ci_low"), _column(rows, "ci_high")
    has_ci = np.isfinite(low) & np.isfinite(high)
    bad = np.array([_unreliable(r) for r in rows], dtype=bool)
    good_ci, good_point = has_ci & ~bad, ~has_ci & ~bad
    # A finite-sample interval need not contain its point estimate (betting on a few huge weights): clip at 0.
    ax.errorbar(values[good_ci], y[good_ci], xerr=[np.maximum(values[good_ci] - low[good_ci], 0.0),
                                                   np.maximum(high[good_ci] - values[good_ci], 0.0)],
                fmt="o", color=_OK_COLOUR, capsize=4)
    ax.plot(values[good_point], y[good_point], "o", color=_OK_COLOUR)
    bad_ci = has_ci & bad
    ax.barh(y[bad_ci], high[bad_ci] - low[bad_ci], left=low[bad_ci], height=0.35, facecolor="none",
            edgecolor=_UNRELIABLE_COLOUR, hatch="///", linewidth=1)
    ax.plot(values[bad], y[bad], "o", color=_UNRELIABLE_COLOUR, markerfacecolor="white", markeredgewidth=1.5)
    ax.set_yticks(y, [f"{r['estimator']} (unreliable)" if _unreliable(r) else r["estimator"] for r in rows])
    for label, is_bad in zip(ax.get_yticklabels(), bad):
        label.set_color(_UNRELIABLE_COLOUR if is_bad else "#222222")
    ax.set_xlabel("estimated policy value")
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color=_OK_COLOUR, marker="o", label="ok")]
    if bad.any():
        handles.append(Patch(facecolor="none", edgecolor=_UNRELIABLE_COLOUR, hatch="///",
                             label="unreliable: not evidence (see reasons)"))
    ax.use_sticky_edges = False  # bars would otherwise pin the x-range to a hatched band's edge
    ax.margins(x=0.05)
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles), frameon=False,
              fontsize="small")
    fig.tight_layout()
    return fig


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


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:0.92em}th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}.note{color:#555;font-size:0.9em}
.warn{color:#a33;font-weight:bold}img{max-width:100%}
tr.unreliable td.discredited{color:#9a9a9a;text-decoration:line-through}tr.unreliable td{background:#f7f7f7}
th.verdict,td.verdict{text-align:left}td.verdict{min-width:16em;max-width:26em;font-size:0.9em}td.verdict.ok{color:#2a7a2a}
tr.unreliable td.verdict{color:#a33;text-decoration:none}td.verdict b{font-weight:bold}
td.verdict ul{margin:0;padding-left:1.1em}"""


def _html_row(row: dict[str, object]) -> str:
    """One estimate; an unreliable one greyed, its value and interval struck through, its reasons beside it."""
    bad = _unreliable(row)
    cells = []
    for col, _ in _HTML_COLUMNS:
        if col == "verdict":
            if bad:
                reasons = "".join(f"<li>{html.escape(r)}</li>" for r in split_reasons(str(row.get("reasons") or "")))
                cells.append(f"<td class='verdict'><b>UNRELIABLE</b><ul>{reasons}</ul></td>")
            else:
                cells.append(f"<td class='verdict ok'>{html.escape(_verdict_text(row))}</td>")
            continue
        struck = " class='discredited'" if bad and col in _DISCREDITED else ""
        cells.append(f"<td{struck}>{html.escape(_fmt(row.get(col)))}</td>")
    return ("<tr class='unreliable'>" if bad else "<tr>") + "".join(cells) + "</tr>"


def to_html(result: pl.DataFrame, *, weights: np.ndarray | None = None, title: str = "Off-policy evaluation") -> str:
    """One self-contained page: estimates with intervals, a forest plot, a weight histogram, diagnostics."""
    head = "".join(f"<th class='{col}'>{html.escape(label)}</th>" for col, label in _HTML_COLUMNS)
    rows = list(result.iter_rows(named=True))
    body = "".join(_html_row(row) for row in rows)
    notes = sorted({row["ci_note"] for row in rows if row.get("ci_note")})
    unreliable = sum(_unreliable(row) for row in rows)
    banner = (f"<p class='warn'>{unreliable} of {len(rows)} estimate(s) UNRELIABLE: the logs cannot answer this "
              "question with them; their values and intervals are struck through and are not evidence "
              "(reasons beside each; thresholds in docs/verdicts.md).</p>" if unreliable else "")
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "<h2>Estimates</h2>", banner, f"<table><tr>{head}</tr>{body}</table>",
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
