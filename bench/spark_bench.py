"""The estimators on Spark local[2] vs polars on the same parquet table; prints a markdown table.

    .venv/bin/python -m bench.spark_bench [--rows 10000000] [--partitions 8] [--resamples 1000]

Both engines read the same parquet file (``bench.evaluators_bench.synthetic_table``: single-row events) and run
ips, snips, dm and dr with the normal interval and with the Poisson bootstrap: median
of 3 after one warm-up run, rows/s each, the ratio. Spark runs first, in this process, so the driver's peak RSS
(getrusage) is the driver's own (the table is written by a child process); the JVM's peak (VmHWM) is read from
/proc. The per-partition cost (seconds per million rows on one Python worker) is what a cluster of N executors
divides by N, plus the shuffle by event id.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SPEC = "ips,snips,dm,dr"


def _median_time(run: Callable[[], object], repeats: int = 3) -> float:
    run()  # warm-up: JVM classes, Python workers, page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _jvm_peak_mib(session: object) -> float:
    pid = session.sparkContext._gateway.proc.pid  # type: ignore[attr-defined]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)  # child process: write the table, exit
    parser.add_argument("--partition-cost", default=None, help=argparse.SUPPRESS)  # child: one partition's cost
    args = parser.parse_args()
    if args.partition_cost:
        _partition_cost(Path(args.partition_cost))
        return
    if args.write:
        from bench.evaluators_bench import synthetic_table

        synthetic_table(args.rows, 0).write_parquet(args.write)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.parquet"
        subprocess.run([sys.executable, "-m", "bench.spark_bench", "--rows", str(args.rows), "--write", str(path)],
                       check=True)
        _compare(path, args)
        # In a fresh process, so that its peak RSS is the partition's and not the comparison's.
        subprocess.run([sys.executable, "-m", "bench.spark_bench", "--partition-cost", str(path)], check=True)


def _partition_cost(path: Path) -> None:
    """``run_partition`` (what one Spark Python worker runs) on up to 1M rows of the table, as Arrow batches."""
    import pyarrow.parquet as pq

    from evaluators.estimators import parse_estimators
    from evaluators.evaluate import needed_columns
    from evaluators.spark.partition import Plan, run_partition
    from evaluators.table import checked_columns

    # Only the first 1M rows are read (Spark's default Arrow batch size): slices of a whole table read first would keep
    # all of it in memory and its read's peak in ru_maxrss.
    batches = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        batches.append(batch)
        if len(batches) * 10_000 >= 1_000_000:
            break
    estimators = parse_estimators(SPEC)
    plan = Plan(tuple(estimators), tuple(checked_columns(needed_columns(estimators))), False, "normal", 1, 0)
    rows, arrow_mib = sum(b.num_rows for b in batches), sum(b.nbytes for b in batches) / 2**20
    rss_before = int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
    start = time.perf_counter()
    state = next(run_partition(iter(batches), plan))
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"One partition (`run_partition`, what a Python worker runs): {rows:,} rows, {arrow_mib:.0f} MiB of Arrow "
          f"batches, {elapsed:.2f} s, peak RSS +{peak - rss_before:.0f} MiB above the batches, state row "
          f"{len(state.column(0)[0].as_py()):,} bytes.")


def _compare(path: Path, args: argparse.Namespace) -> None:
    import polars as pl

    from evaluators import estimate
    from evaluators.spark.engine import estimate_spark
    from evaluators.spark.session import spark_session

    cis = ["normal", "bootstrap"]
    session = spark_session("local[2]", app_name="bench", conf={"spark.ui.enabled": "false",
                                                                "spark.driver.memory": "2g"})
    spark_times, results = {}, {}
    for ci in cis:
        def on_spark(ci: str = ci) -> None:
            table = session.read.parquet(str(path))
            results[("spark", ci)] = estimate_spark(table, SPEC, ci=ci, n_bootstrap=args.resamples,
                                                    partitions=args.partitions)
        spark_times[ci] = _median_time(on_spark)
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    jvm_peak = _jvm_peak_mib(session)
    session.stop()
    polars_times = {}
    for ci in cis:
        def on_polars(ci: str = ci) -> None:
            results[("polars", ci)] = estimate(pl.read_parquet(path), SPEC, ci=ci, n_bootstrap=args.resamples)
        polars_times[ci] = _median_time(on_polars)
    # Values and interval ends alike: the bootstrap's resampled sums are keyed by event id, so they must agree too.
    worst = max(abs(a - b) / abs(b) for ci in cis for column in ("value", "ci_low", "ci_high")
                for a, b in zip(results[("spark", ci)][column], results[("polars", ci)][column]))
    print(f"| {args.rows:,} rows, ips/snips/dm/dr | polars (1 process) | Spark local[2], {args.partitions} partitions "
          "| Spark / polars time |")
    print("|---|---|---|---|")
    for ci in cis:
        p, s = polars_times[ci], spark_times[ci]
        print(f"| ci={ci}, read + estimate (median of 3) | {p:.2f} s ({args.rows / p / 1e6:.2f} M rows/s) | "
              f"{s:.2f} s ({args.rows / s / 1e6:.2f} M rows/s) | {s / p:.1f}x |")
    print()
    print(f"Driver: Python peak RSS {driver_peak:.0f} MiB during the Spark runs (no table rows reach it), JVM (driver "
          f"and local executors) peak RSS {jvm_peak:.0f} MiB. Largest relative difference of the values and "
          f"interval ends, Spark vs polars: {worst:.1e}.")


if __name__ == "__main__":
    main()
