"""Coverage study: how often each interval method's interval contains the known truth, from ESS ~10 to ~10,000.

For every cell (a synthetic problem from ``evaluators.synthetic`` in one weight regime), every run draws a fresh
feedback table from its own seed and calls the product's ``evaluators.estimate`` once per interval method with
all the cell's estimators (the same table for every method, so methods are compared on paired data). A run
counts as covered when ci_low ≤ truth ≤ ci_high. Per (cell, method, estimator) the summary gives the realised
coverage with its binomial standard error sqrt(c (1 − c) / runs), the median width and median ESS, and — when
``estimate`` returns a ``verdict`` column — the share of runs judged ``ok`` and the coverage among those runs
(without the column every run counts as ok). Methods that ``evaluators.intervals.CI_METHODS`` does not offer
are skipped with a note, so the same code runs before and after ``betting``/``auto`` exist.

Doc generator (writes docs/intervals.md and docs/intervals-coverage.png; ~10–15 min for 500 runs per cell):

    PYTHONPATH=. .venv/bin/python -m tests.evaluators.coverage_study --runs 500 --out docs/
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from evaluators import estimate
from evaluators.intervals import CI_METHODS
from evaluators.synthetic import ContextualProblem, SlateProblem

ALPHA = 0.05
NOMINAL = 1 - ALPHA
TOLERANCE = 0.02                 # the rule: coverage ≥ nominal − 2 points
METHODS = ("normal", "bootstrap", "bernstein", "betting", "auto")
ESTIMATORS = {"contextual": ("ips", "snips"), "slate": ("standard_ips", "rips")}


@dataclass(frozen=True)
class Cell:
    """One problem in one weight regime; ``name`` says the regime in words."""

    name: str
    problem: ContextualProblem | SlateProblem

    @property
    def kind(self) -> str:
        return "slate" if isinstance(self.problem, SlateProblem) else "contextual"

    @property
    def estimators(self) -> tuple[str, ...]:
        return ESTIMATORS[self.kind]


# Regimes from near on-policy to a sharp logger that disagrees with a sharp target (rare huge weights).
CELLS: tuple[Cell, ...] = (
    Cell("ctx-large", ContextualProblem(n_events=30_000, n_actions=5)),
    Cell("ctx-mild", ContextualProblem(n_events=10_000, n_actions=5)),
    Cell("ctx-moderate", ContextualProblem(n_events=2_000, n_actions=10, target_temperature=0.3)),
    Cell("ctx-hard", ContextualProblem(n_events=1_000, n_actions=20, logging_temperature=0.6,
                                       target_temperature=0.3)),
    Cell("ctx-extreme", ContextualProblem(n_events=300, n_actions=20, logging_temperature=0.5,
                                          target_temperature=0.2)),
    Cell("slate-mild", SlateProblem(n_events=5_000, n_items=5, slate_length=2)),
    Cell("slate-hard", SlateProblem(n_events=1_000, n_items=6, slate_length=3, target_temperature=0.5)),
    Cell("slate-extreme", SlateProblem(n_events=300, n_items=8, slate_length=3, logging_temperature=0.7,
                                       target_temperature=0.3)),
)
CELL_BY_NAME = {cell.name: cell for cell in CELLS}
EASY_CELL, HARD_CELL = CELL_BY_NAME["ctx-mild"], CELL_BY_NAME["ctx-extreme"]
# The fast version (a test, under a minute): the ends of the ESS range, contextual and slate, fixed seeds.
FAST_CELLS: tuple[Cell, ...] = (EASY_CELL, CELL_BY_NAME["ctx-moderate"], HARD_CELL, CELL_BY_NAME["slate-extreme"])
FAST_RUNS = 200


def split_methods(methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """(methods ``estimate`` offers, methods it does not: skipped with a note)."""
    return [m for m in methods if m in CI_METHODS], [m for m in methods if m not in CI_METHODS]


def _draw_seed(seed: int, cell_name: str, run: int) -> int:
    # Keyed by the cell's name, not its place in a list: the fast and full studies draw the same tables.
    return int(np.random.SeedSequence([seed, zlib.crc32(cell_name.encode()), run]).generate_state(1)[0])


def run_cell(
    cell: Cell, methods: Sequence[str], *, runs: int, seed: int = 0, n_bootstrap: int = 500, progress: tqdm | None = None,
) -> pl.DataFrame:
    """One row per (run, method, estimator): the interval, whether it covered the truth, ESS and verdict."""
    truth = cell.problem.truth
    frames = []
    for run in range(runs):
        table = cell.problem.draw(_draw_seed(seed, cell.name, run))
        for method in methods:
            result = estimate(table, list(cell.estimators), ci=method, alpha=ALPHA, seed=run,
                              n_bootstrap=n_bootstrap, workers=1)
            # Before the verdict exists every run counts as ok: the "among ok" columns then equal the totals.
            ok = result["verdict"] == "ok" if "verdict" in result.columns else pl.Series([True] * result.height)
            frames.append(result.select("estimator", "value", "ci_low", "ci_high", "ess").with_columns(
                pl.lit(run).alias("run"), pl.lit(method).alias("method"), ok.alias("ok")))
            if progress is not None:
                progress.update(1)
    out = pl.concat(frames)
    low, high = pl.col("ci_low").fill_nan(None), pl.col("ci_high").fill_nan(None)
    # A missing or NaN bound is a miss: an interval that says nothing has not covered the truth.
    return out.with_columns(
        pl.lit(cell.kind).alias("kind"), pl.lit(cell.name).alias("cell"), pl.lit(truth).alias("truth"),
        ((low <= truth) & (high >= truth)).fill_null(False).alias("covered"),
        (pl.col("ci_high") - pl.col("ci_low")).alias("width"),
    )


def summarise(runs: pl.DataFrame) -> pl.DataFrame:
    """Per (cell, method, estimator): coverage ± binomial SE, median width and ESS, ok share, coverage among ok."""
    summary = runs.group_by("kind", "cell", "method", "estimator", maintain_order=True).agg(
        pl.len().alias("runs"),
        pl.col("ess").median().alias("median_ess"),
        pl.col("covered").mean().alias("coverage"),
        pl.col("width").median().alias("median_width"),
        pl.col("ok").mean().alias("ok_share"),
        pl.col("ok").sum().alias("n_ok"),
        pl.col("covered").filter(pl.col("ok")).mean().alias("coverage_ok"),
    )

    def se(share: str, count: str) -> pl.Expr:
        return (pl.col(share) * (1 - pl.col(share)) / pl.col(count)).sqrt()

    return summary.with_columns(se("coverage", "runs").alias("coverage_se"),
                                se("coverage_ok", "n_ok").alias("coverage_ok_se"))


@dataclass
class Study:
    runs: pl.DataFrame
    summary: pl.DataFrame
    methods: list[str]
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_study(
    cells: Sequence[Cell], methods: Sequence[str], *, runs: int, seed: int = 0, n_bootstrap: int = 500,
    show_progress: bool = True,
) -> Study:
    present, skipped = split_methods(methods)
    for method in skipped:
        print(f"coverage study: method '{method}' is not in evaluators.intervals.CI_METHODS; skipped",
              file=sys.stderr)
    if not present:
        raise ValueError(f"parameter 'methods': none of {list(methods)} is offered (CI_METHODS = {CI_METHODS})")
    start = time.perf_counter()
    with tqdm(total=len(cells) * runs * len(present), desc="coverage study", unit="estimate", file=sys.stderr,
              disable=not show_progress) as bar:
        frames = [run_cell(cell, present, runs=runs, seed=seed, n_bootstrap=n_bootstrap, progress=bar)
                  for cell in cells]
    all_runs = pl.concat(frames)
    return Study(all_runs, summarise(all_runs), present, skipped, time.perf_counter() - start)


def safe_regions(summary: pl.DataFrame) -> dict[str, str]:
    """One plain sentence per method: from which ESS on it held nominal − 2 points, where it failed."""
    out: dict[str, str] = {}
    floor = NOMINAL - TOLERANCE
    normal_width = summary.filter(pl.col("method") == "normal").select("cell", "estimator", pl.col("median_width")
                                                                        .alias("normal_width"))
    for (method,), rows in summary.group_by("method", maintain_order=True):
        # "Failed" means clearly: more than 2 binomial SE below the floor, not a Monte-Carlo wobble.
        failed = rows.filter(pl.col("coverage") + 2 * pl.col("coverage_se") < floor)
        width = ""
        if method != "normal" and not normal_width.is_empty():
            ratio = rows.join(normal_width, on=["cell", "estimator"]).select(
                (pl.col("median_width") / pl.col("normal_width")).median()).item()
            width = f" Its median width is {ratio:.1f}× the normal interval's (median over pairs)."
        if failed.is_empty():
            out[method] = (f"held ≥ {floor:.0%} (within 2 SE) in every cell, down to a median ESS of "
                           f"{rows['median_ess'].min():.0f}.{width}")
            continue
        worst = failed.sort("coverage").row(0, named=True)
        held_above = float(failed["median_ess"].max())
        fine = rows.filter(pl.col("median_ess") > held_above)
        above = (f"held in every cell with median ESS above {held_above:.0f} ({fine.height} cell-estimator pairs)"
                 if fine.height else "never held reliably")
        out[method] = (f"{above}; fell clearly below {floor:.0%} in {failed.height} pair(s) with median ESS "
                       f"{failed['median_ess'].min():.0f}–{held_above:.0f}, worst {worst['coverage']:.0%} "
                       f"({worst['cell']}, {worst['estimator']}).{width}")
    return out


def plot(summary: pl.DataFrame, path: Path) -> None:
    """Coverage vs median ESS (log x), one colour per method, one marker per estimator, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("contextual", "slate")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    colours = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    markers = {"ips": "o", "snips": "s", "standard_ips": "D", "rips": "^"}
    lines = {"snips": "--", "rips": "--"}  # the self-normalised / cascade estimator dashed, plain IPS solid
    offsets = {m: 1.0 + 0.04 * (i - 2) for i, m in enumerate(METHODS)}  # spread overlapping points a little
    for ax, kind in zip(axes, kinds):
        ax.axhspan(NOMINAL - TOLERANCE, NOMINAL, color="0.88", label=f"nominal − {TOLERANCE * 100:.0f} points")
        ax.axhline(NOMINAL, color="k", lw=1, label=f"nominal {NOMINAL:.0%}")
        part = summary.filter(pl.col("kind") == kind)
        for (method, estimator), rows in part.group_by("method", "estimator", maintain_order=True):
            rows = rows.sort("median_ess")
            ax.errorbar(rows["median_ess"].to_numpy() * offsets.get(method, 1.0), rows["coverage"].to_numpy(),
                        yerr=1.96 * rows["coverage_se"].to_numpy(), color=colours.get(method), marker=markers.get(
                            estimator, "o"), ms=6, lw=1, ls=lines.get(estimator, "-"), capsize=2, label=f"{method} · {estimator}")
        ax.set_xscale("log")
        ax.set_xlabel("median effective sample size (log scale)")
        ax.set_title(f"{kind} problems")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("realised coverage of the 95% interval (±1.96 SE)")
    low = float(summary["coverage"].min())
    axes[0].set_ylim(max(0.0, min(low - 0.05, 0.8)), 1.005)
    handles, labels = axes[1].get_legend_handles_labels()
    h0, l0 = axes[0].get_legend_handles_labels()
    seen = dict(zip(l0 + labels, h0 + handles))
    fig.legend(seen.values(), seen.keys(), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_doc(study: Study, out_dir: Path, *, runs: int, command: str) -> tuple[Path, Path]:
    """docs/intervals.md (table and where each method is safe) and docs/intervals-coverage.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png, md = out_dir / "intervals-coverage.png", out_dir / "intervals.md"
    plot(study.summary, png)
    cells = "\n".join(
        f"| `{c.name}` | {c.kind} | `{c.problem!r}` | {c.problem.truth:.4f} | "
        f"{c.problem.expected_ess_share() * c.problem.n_events:.3g} |" for c in CELLS
        if c.name in set(study.summary["cell"]))
    table = "\n".join(
        f"| `{r['cell']}` | {r['estimator']} | {r['median_ess']:.0f} | {r['method']} | "
        f"{r['coverage']:.1%} ± {r['coverage_se']:.1%} | {r['median_width']:.4g} | {r['ok_share']:.0%} | "
        + (f"{r['coverage_ok']:.1%} ({r['n_ok']})" if r["n_ok"] else "–") + " |"
        for r in study.summary.iter_rows(named=True))
    safe = "\n".join(f"- **{m}**: {sentence}" for m, sentence in safe_regions(study.summary).items())
    skipped = (f"\nNot in this run (not offered by `CI_METHODS` when it was generated): "
               f"{', '.join(study.skipped)}.\n" if study.skipped else "")
    md.write_text(f"""# Interval coverage: where each method can be trusted

Generated by `{command}` in
{study.seconds / 60:.1f} min; do not edit by hand. Methods: {', '.join(study.methods)}.{skipped}

Each cell is a synthetic problem (`evaluators/synthetic.py`) with an exactly known target value: contexts come
from a finite set, so the truth is a finite sum over the generator's own tables (slates: every ordered slate
enumerated), never a simulation. Each of {runs} runs per cell draws a fresh table from its own seed and asks
`evaluators.estimate` for a {NOMINAL:.0%} interval with every method on the same table. Coverage is the share
of runs whose interval contains the truth, ± its binomial standard error sqrt(c(1 − c)/runs); a missing (NaN)
interval counts as a miss. ESS is the median over runs of the realised (Σw)²/Σw². "ok" is the share of runs
whose `verdict` was `ok` (every run when `estimate` has no verdict) and the last column the coverage among
those runs (how many). The rule for `auto`: coverage among ok runs ≥ {NOMINAL - TOLERANCE:.0%} in every cell
(the slow test `test_auto_holds_where_it_says_ok` checks it, allowing 3 binomial SE of Monte-Carlo error).

![coverage vs ESS](intervals-coverage.png)

## Where each method is safe (read off this run)

"Clearly below" means more than 2 binomial SE under {NOMINAL - TOLERANCE:.0%}.
The realised ESS flatters the hardest cells: their expected ESS n / E_μ[w²] (the last column of the cells table,
computed exactly) is far smaller, because most samples never draw the rare, huge weights that carry the truth.
A method that holds at a realised ESS of ~10 here has held on logs that look better than they are.

{safe}

## Cells

| cell | problem | parameters | truth | n / E[w²] |
|---|---|---|---|---|
{cells}

## Coverage

| cell | estimator | median ESS | method | coverage ± SE | median width | ok | coverage among ok (runs) |
|---|---|---|---|---|---|---|---|
{table}
""")
    return md, png


@dataclass
class Args:
    runs: int = 500
    """runs (seeds) per cell"""
    out: Path = Path("docs")
    """folder for intervals.md and intervals-coverage.png"""
    methods: tuple[str, ...] = METHODS
    """interval methods to compare; ones not in CI_METHODS are skipped with a note"""
    cells: tuple[str, ...] = tuple(CELL_BY_NAME)
    """cells to run (names from CELLS)"""
    n_bootstrap: int = 500
    """bootstrap resamples per interval"""
    seed: int = 0
    """base seed of every draw"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=Args.runs)
    parser.add_argument("--out", type=Path, default=Args.out)
    parser.add_argument("--methods", default=",".join(Args.methods))
    parser.add_argument("--cells", default=",".join(Args.cells))
    parser.add_argument("--n-bootstrap", type=int, default=Args.n_bootstrap)
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--fast", action="store_true", help=f"the fast version: {FAST_RUNS} runs of the FAST_CELLS")
    ns = parser.parse_args(argv)
    args = Args(ns.runs, ns.out, tuple(ns.methods.split(",")), tuple(ns.cells.split(",")), ns.n_bootstrap, ns.seed)
    if ns.fast:
        args.runs, args.cells = FAST_RUNS, tuple(c.name for c in FAST_CELLS)
    unknown = [c for c in args.cells if c not in CELL_BY_NAME]
    if unknown or args.runs < 1:
        what = f"unknown cell(s) {', '.join(unknown)}" if unknown else f"must be >= 1, got {args.runs}"
        print(f"coverage study: option '{'--cells' if unknown else '--runs'}': {what}", file=sys.stderr)
        return 2
    study = run_study([CELL_BY_NAME[c] for c in args.cells], args.methods, runs=args.runs, seed=args.seed,
                      n_bootstrap=args.n_bootstrap)
    command = " ".join(["python -m tests.evaluators.coverage_study", *(sys.argv[1:] if argv is None else argv)])
    md, png = write_doc(study, args.out, runs=args.runs, command=command)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200):
        print(study.summary.select("cell", "estimator", "median_ess", "method", "coverage", "coverage_se",
                                   "median_width", "ok_share", "coverage_ok"))
    print(f"wrote {md} and {png} in {study.seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
