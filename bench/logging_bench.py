"""Log writer and table benchmarks: submit() cost, writer throughput, read-back and reward-join speed.

Run: ``.venv/bin/python bench/logging_bench.py [--records N] [--candidates C]``. Reads top to bottom:

1. submit(): the serving path's cost - median and p99 of one call, timed one by one while the writer
   thread runs (so the figure includes GIL contention with the thread that serializes).
2. writer throughput: records/s from the first submit to the end of close() (everything written+fsynced).
3. read-back: log -> polars decisions/outcomes tables (records/s).
4. reward join: join_rewards on a synthetic decisions table of --join-rows rows (vectorised polars).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from logging_schema.rewards import RewardDefinition  # noqa: E402
from logging_schema.tables import join_rewards, read_tables  # noqa: E402
from logging_schema.writer import LogWriter  # noqa: E402
from recsys_rl.logging.v1.events_pb2 import DecisionEvent, LogRecord  # noqa: E402


@dataclass
class Args:
    records: int = 20_000  # DecisionEvents submitted per run
    candidates: int = 100  # candidates per DecisionEvent (each with 2 numeric, 2 categorical features, 2 tags)
    slate_size: int = 10  # logged slots per decision
    join_rows: int = 1_000_000  # decision rows in the synthetic reward-join table
    seed: int = 0


def decision(args: Args, i: int) -> LogRecord:
    event = DecisionEvent(event_id=f"ev-{i:012d}", request_id=f"req-{i}", surface="default", user_id=f"u{i % 997}",
                          slate_size=args.slate_size, policy_version="v1", serving_mode=1, slate_propensity=0.01)
    event.served_at.seconds = 1_700_000_000 + i
    event.context.numeric["hour"] = 13.0
    event.context.categorical["device"] = "ios"
    for c in range(args.candidates):
        candidate = event.candidates.add(item_id=f"item-{c}", baseline_score=float(c))
        candidate.features.numeric.update({"price": 1.0 + c, "age_days": float(c % 30)})
        candidate.features.categorical.update({"topic": f"t{c % 8}", "brand": f"b{c % 20}"})
        candidate.features.tags.extend([f"tag{c % 3}", f"tag{c % 5}"])
    for p in range(args.slate_size):
        event.slate.add(item_id=f"item-{p}", position=p, propensity=0.9, score=0.5, candidate_index=p,
                        exploration_mass=0.1, draw=0.3)
    event.exploration.algorithm = "epsilon_greedy"
    event.exploration.cap = 0.1
    return LogRecord(decision=event)


def bench_writer(args: Args, log_dir: Path) -> None:
    # A pool of distinct records built up front: building protobufs is the caller's cost, not the writer's.
    pool = [decision(args, i) for i in range(256)]
    size = pool[0].ByteSize()
    started = time.perf_counter()
    for record in pool:
        record.SerializeToString()
    serialize_us = (time.perf_counter() - started) / len(pool) * 1e6

    writer = LogWriter(log_dir, max_queue=args.records + 1)
    costs_ns = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for i in range(args.records):
        record = pool[i % len(pool)]
        t0 = clock()
        writer.submit(record)
        costs_ns.append(clock() - t0)
    submitted = time.perf_counter()
    writer.close()
    finished = time.perf_counter()
    stats = writer.stats()

    costs_ns.sort()
    print(f"record: {args.candidates} candidates, {args.slate_size} slots, {size} bytes serialized "
          f"(serialize alone {serialize_us:.1f} µs)")
    print(f"submit(): median {statistics.median(costs_ns) / 1e3:.2f} µs, "
          f"p99 {costs_ns[int(0.99 * len(costs_ns))] / 1e3:.2f} µs "
          f"(submitting {args.records} took {submitted - started:.2f} s)")
    print(f"writer throughput: {stats.written / (finished - started):,.0f} records/s, "
          f"{stats.bytes / (finished - started) / 2**20:.0f} MiB/s ({stats.segments} segments, "
          f"close() drained the rest in {finished - submitted:.2f} s)")

    started = time.perf_counter()
    tables = read_tables(log_dir)
    elapsed = time.perf_counter() - started
    print(f"read-back to polars: {tables.stats.records / elapsed:,.0f} decisions/s "
          f"({tables.decisions.height} rows in {elapsed:.2f} s)")


def bench_join(args: Args) -> None:
    rng = np.random.default_rng(args.seed)
    n_decisions = args.join_rows // args.slate_size
    served = 1_700_000_000_000_000 + np.arange(n_decisions, dtype=np.int64) * 1_000
    decisions = pl.DataFrame({
        "event_id": np.repeat(np.arange(n_decisions), args.slate_size).astype(str),
        "item_id": np.tile(np.arange(args.slate_size), n_decisions).astype(str),
        "surface": "default",
        "served_at": np.repeat(served, args.slate_size),
    }).with_columns(pl.col("served_at").cast(pl.Datetime("us", "UTC")))  # fmt: skip
    n_outcomes = args.join_rows // 5
    which = rng.integers(0, n_decisions, n_outcomes)
    outcomes = pl.DataFrame({
        "event_id": which.astype(str),
        "item_id": rng.integers(0, args.slate_size, n_outcomes).astype(str),
        "outcome": rng.choice(["click", "purchase", "dwell"], n_outcomes),
        "value": 1.0,
        "occurred_at": served[which] + rng.integers(0, 8_000_000, n_outcomes),
    }).with_columns(pl.col("occurred_at").cast(pl.Datetime("us", "UTC")))  # fmt: skip
    started = time.perf_counter()
    joined = join_rewards(decisions, outcomes, RewardDefinition(weights={"click": 1.0, "purchase": 5.0}))
    elapsed = time.perf_counter() - started
    print(f"join_rewards: {joined.height:,} decision rows x {n_outcomes:,} outcomes in {elapsed:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(Args()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = Args(**vars(parser.parse_args()))
    with tempfile.TemporaryDirectory() as tmp:
        bench_writer(args, Path(tmp) / "logs")
    bench_join(args)


if __name__ == "__main__":
    main()
