"""Estimate Bernoulli TS's click rate from uniform-random OBD logs and compare with BTS's own logs.

Reads top to bottom: load both logs of the Open Bandit Dataset sample, build BTS's action distribution two
ways (Monte Carlo over ZOZO's published Beta parameters; the BTS log's own per-slot item frequencies), turn
the *random* log into bandit-feedback tables for each, estimate with IPS / SNIPS / DR, and set the results
against BTS's on-policy click rate (the mean click of the *bts* log). Writes a plot and prints a table.

    .venv/bin/python scripts/obd_run.py [--data-dir ../shared/data/obd-sample] [--out docs/obd-run.png]

Estimates come from ``evaluators.estimate`` when the package exposes it; otherwise from the small local
helper below (normal intervals; delta method for SNIPS), and the output says which one was used.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(REPO))

from evaluators.importers.obd import (  # noqa: E402
    ObdLog,
    bts_action_dist,
    empirical_action_dist,
    load_obd,
    obd_feedback_table,
)

ESTIMATORS = ("ips", "snips", "dr")


@dataclass
class Args:
    data_dir: Path = REPO.parent / "shared" / "data" / "obd-sample"
    """the OBD sample (folders random/ and bts/)"""
    out: Path = REPO / "docs" / "obd-run.png"
    """where the plot goes"""
    n_sim: int = 100_000
    """Monte Carlo rounds for BTS's action distribution"""
    seed: int = 12345
    """seed of the Monte Carlo simulation"""
    alpha: float = 0.05
    """1 − confidence level of every interval"""


@dataclass(frozen=True)
class Estimate:
    label: str
    value: float
    low: float
    high: float
    method: str


def parse_args() -> Args:
    defaults = Args()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=defaults.data_dir)
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--n-sim", type=int, default=defaults.n_sim)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    return Args(**vars(parser.parse_args()))


def position_ctr_model(logged: ObdLog) -> np.ndarray:
    """q̂(item, position) = the slot's click rate in the log: a deliberately simple, context-free reward model.

    With ~13 clicks per slot, per-item rates would be mostly 0; the pooled slot rate is what the data support.
    """
    rows = logged.rows
    q = np.zeros((logged.n_items, logged.n_positions))
    for k in range(logged.n_positions):
        q[:, k] = float(rows.filter(pl.col("position") == k)["click"].mean())  # type: ignore[arg-type]
    return q


def local_estimates(table: pl.DataFrame, alpha: float) -> list[Estimate]:
    """IPS, SNIPS, DR with normal intervals (fallback when ``evaluators.estimate`` is not available).

    IPS = mean(w r); DR = mean(q̂π + w (r − q̂)); SE = sd(terms)/√n. SNIPS = Σwr/Σw with the delta-method
    SE = sd(w (r − SNIPS)) / (mean(w) √n).
    """
    z = _normal_quantile(1 - alpha / 2)
    w = (table["target_pscore"] / table["pscore"]).to_numpy()
    r = table["reward"].to_numpy()
    n = len(r)
    out = []
    ips_terms = w * r
    dr_terms = table["q_hat_target"].to_numpy() + w * (r - table["q_hat"].to_numpy())
    for name, terms in (("ips", ips_terms), ("dr", dr_terms)):
        value, se = terms.mean(), terms.std(ddof=1) / math.sqrt(n)
        out.append(Estimate(name, value, value - z * se, value + z * se, "normal (local helper)"))
    snips = ips_terms.sum() / w.sum()
    se = (w * (r - snips)).std(ddof=1) / (w.mean() * math.sqrt(n))
    out.insert(1, Estimate("snips", snips, snips - z * se, snips + z * se, "normal, delta method (local helper)"))
    return out


def library_estimates(table: pl.DataFrame, alpha: float) -> list[Estimate] | None:
    """``evaluators.estimate`` if the package provides it; ``None`` (and a note) otherwise."""
    try:
        from evaluators import estimate  # type: ignore[attr-defined]
    except ImportError:
        return None
    result = estimate(table, estimators=list(ESTIMATORS), ci="normal", alpha=alpha)
    needed = {"estimator", "value", "ci_low", "ci_high"}
    if not needed <= set(result.columns):
        print(f"note: evaluators.estimate returned columns {result.columns}, expected {sorted(needed)}; "
              "using the local helper")
        return None
    return [
        Estimate(row["estimator"], row["value"], row["ci_low"], row["ci_high"],
                 f"evaluators.estimate, {row.get('ci_method') or 'normal'}")
        for row in result.iter_rows(named=True)
    ]


def on_policy_value(logged: ObdLog, alpha: float) -> Estimate:
    """Mean click of the log with a Wilson score interval (clicks are Bernoulli; ~40 of them)."""
    clicks = logged.rows["click"].to_numpy()
    n, p = len(clicks), clicks.mean()
    z = _normal_quantile(1 - alpha / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate("on-policy", p, centre - half, centre + half, "Wilson score")


def _normal_quantile(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def plot(results: dict[str, list[Estimate]], truth: Estimate, out: Path, alpha: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, lows, highs = [], [], [], []
    for target, estimates in results.items():
        for e in estimates:
            labels.append(f"{e.label.upper()}, π: {target}")
            values.append(e.value)
            lows.append(e.value - e.low)
            highs.append(e.high - e.value)
    y = np.arange(len(labels))[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 2.4))
    ax.axvspan(truth.low, truth.high, color="tab:green", alpha=0.15, label=f"BTS on-policy {truth.method} interval")
    ax.axvline(truth.value, color="tab:green", label=f"BTS on-policy CTR = {truth.value:.4f}")
    ax.errorbar(values, y, xerr=[lows, highs], fmt="o", color="tab:blue", capsize=4,
                label=f"off-policy estimate from the random log, {100 * (1 - alpha):.0f}% CI")
    ax.set_yticks(y, labels)
    ax.set_xlabel("click rate per impression")
    ax.set_title("OBD sample (campaign all): BTS's click rate from uniform-random logs", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=1, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict[str, list[Estimate]]:
    random_log = load_obd(args.data_dir, "random", campaign="all")
    bts_log = load_obd(args.data_dir, "bts", campaign="all")
    truth = on_policy_value(bts_log, args.alpha)
    targets = {
        "BTS prior, Monte Carlo": bts_action_dist("all", n_sim=args.n_sim, seed=args.seed),
        "bts-log frequencies": empirical_action_dist(bts_log),
    }
    reward_model = position_ctr_model(random_log)
    results: dict[str, list[Estimate]] = {}
    for name, dist in targets.items():
        table = obd_feedback_table(random_log, dist, reward_model=reward_model)
        estimates = library_estimates(table, args.alpha)
        if estimates is None:
            if not results:
                print("note: evaluators.estimate is not available; using the local IPS/SNIPS/DR helper")
            estimates = local_estimates(table, args.alpha)
        results[name] = estimates
        w = (table["target_pscore"] / table["pscore"]).to_numpy()
        print(f"\ntarget: {name}; rows {table.height}, mean w {w.mean():.3f}, max w {w.max():.1f}, "
              f"ESS {w.sum() ** 2 / (w ** 2).sum():.0f}")
        for e in estimates:
            print(f"  {e.label:6s} {e.value:.5f}  [{e.low:.5f}, {e.high:.5f}]  {e.method}")
    print(f"\nBTS on-policy CTR (bts log, n={bts_log.n_rows}): {truth.value:.5f}  "
          f"[{truth.low:.5f}, {truth.high:.5f}]  {truth.method}")
    print(f"random log's own CTR: {random_log.on_policy_value():.5f}")
    plot(results, truth, args.out, args.alpha)
    print(f"plot: {args.out}")
    return results


if __name__ == "__main__":
    main(parse_args())
