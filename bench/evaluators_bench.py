"""Evaluator speed on a synthetic feedback table; prints a markdown table.

    .venv/bin/python -m bench.evaluators_bench [--rows 10000000] [--resamples 1000]

1. Point estimates (ips, snips, dm, dr) through ``evaluators.estimate`` (validation + diagnostics
   included) vs one hand-written vectorised numpy pass over the same columns: median of 3, ratio.
2. Poisson bootstrap of the four estimators (``ci="bootstrap"``): wall time, peak RSS
   (resource.getrusage) and peak traced numpy/Python allocations (tracemalloc); and the part of it that
   hashes the event ids into the generator's keys (``evaluators.keys.event_keys``).
3. Baseline: a Python loop over resamples (rng.poisson weights per resample) for IPS on --loop-rows rows.
"""

from __future__ import annotations


# The bootstrap caps BLAS threads itself (threadpoolctl in evaluators/intervals.py), so no environment tweak here.
import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from evaluators import estimate  # noqa: E402
from evaluators.keys import event_keys  # noqa: E402


@dataclass
class Args:
    rows: int = 10_000_000      # rows of the synthetic table
    resamples: int = 1000       # bootstrap resamples
    loop_rows: int = 1_000_000  # rows for the Python-loop bootstrap baseline
    seed: int = 0               # data seed


def synthetic_table(n: int, seed: int) -> pl.DataFrame:
    """Uniform logging over 10 actions, a target policy favouring action 0, Bernoulli rewards."""
    rng = np.random.default_rng(seed)
    action = rng.integers(0, 10, n)
    target = np.where(action == 0, 0.5, 0.5 / 9)
    mu = 0.05 + 0.02 * action
    return pl.DataFrame({
        "event_id": pl.int_range(n, eager=True).cast(pl.String),
        "position": np.zeros(n, dtype=np.int64),
        "action": action,
        "reward": (rng.random(n) < mu).astype(np.float64),
        "pscore": np.full(n, 0.1),
        "target_pscore": target,
        "q_hat": mu + 0.01,
        "q_hat_target": np.full(n, float(0.5 * 0.06 + (0.5 / 9) * sum(0.06 + 0.02 * a for a in range(1, 10)))),
    })


def numpy_pass(df: pl.DataFrame) -> tuple[float, float, float, float]:
    r, p, t = (df.get_column(c).to_numpy() for c in ("reward", "pscore", "target_pscore"))
    q, qt = df.get_column("q_hat").to_numpy(), df.get_column("q_hat_target").to_numpy()
    w = t / p
    wr = w * r
    return float(wr.mean()), float(wr.sum() / w.sum()), float(qt.mean()), float((qt + w * (r - q)).mean())


def median_of_3(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loop_bootstrap(df: pl.DataFrame, resamples: int, seed: int) -> tuple[float, float]:
    """What the vectorised code replaces: one Poisson weight vector and one IPS value per loop turn."""
    wr = (df["target_pscore"] / df["pscore"] * df["reward"]).to_numpy()
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        weights = rng.poisson(1.0, wr.size)
        values.append(float(weights @ wr / weights.sum()))
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in vars(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = Args(**vars(parser.parse_args()))

    df = synthetic_table(args.rows, args.seed)
    spec = "ips,snips,dm,dr"
    reference = numpy_pass(df)
    result = estimate(df, spec)
    assert np.allclose(result["value"].to_numpy(), reference), "estimate() disagrees with the numpy pass"
    t_ours = median_of_3(lambda: estimate(df, spec))
    t_numpy = median_of_3(lambda: numpy_pass(df))

    tracemalloc.start()
    start = time.perf_counter()
    boot = estimate(df, spec, ci="bootstrap", n_bootstrap=args.resamples, seed=1)
    t_boot = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB → GiB

    t_keys = median_of_3(lambda: event_keys(df.get_column("event_id")))

    small = df.head(args.loop_rows)
    start = time.perf_counter()
    loop_bootstrap(small, args.resamples, seed=1)
    t_loop = time.perf_counter() - start
    small_boot = median_of_3(lambda: estimate(small, "ips", ci="bootstrap", n_bootstrap=args.resamples, seed=1))

    print(f"| measure ({args.rows:,} rows, 2 cores) | value |")
    print("|---|---|")
    print(f"| point estimates ips, snips, dm, dr via `estimate` (median of 3) | {t_ours:.3f} s |")
    print(f"| single vectorised numpy pass, same four values (median of 3) | {t_numpy:.3f} s |")
    print(f"| ratio estimate / numpy (goal <= 3x) | {t_ours / t_numpy:.2f}x |")
    print(f"| Poisson bootstrap, {args.resamples} resamples, 4 estimators | {t_boot:.1f} s |")
    print(f"| of which: event keys of the {args.rows:,} event ids (median of 3) | {t_keys:.2f} s |")
    print(f"| peak RSS of the process (getrusage) | {peak_rss:.2f} GiB |")
    print(f"| peak traced allocations during the bootstrap (tracemalloc) | {traced_peak / 1024**3:.2f} GiB |")
    print(f"| Python-loop bootstrap, IPS, {args.loop_rows:,} rows, {args.resamples} resamples | {t_loop:.1f} s |")
    print(f"| vectorised bootstrap, IPS, same {args.loop_rows:,} rows (median of 3) | {small_boot:.2f} s |")
    print(f"| ratio Python loop / vectorised (in-run baseline) | {t_loop / small_boot:.1f}x |")
    print()
    print("| estimator | value | 95% bootstrap interval |")
    print("|---|---|---|")
    for row in boot.iter_rows(named=True):
        print(f"| {row['estimator']} | {row['value']:.5f} | [{row['ci_low']:.5f}, {row['ci_high']:.5f}] |")


if __name__ == "__main__":
    main()
