"""What-if replay (``logged@cap=0.2``) from the logged scores vs re-scoring through VW, same decisions; markdown.

    .venv/bin/python -m bench.whatif_bench [--decisions 100000] [--candidates 100] [--slate-size 10] [--repeats 3]

1. Serve: an in-process DecisionService (learner off, ε-greedy at the default cap) ranks --decisions simulated page
   views (bench.replay_bench.serve) and logs them, each with its candidates' scores (issue 11 item 4).
2. Replay ``logged@cap=0.2`` end to end (log read, target propensities, reward join, table), alternating
   ``logged_scores=False`` (re-scoring: rebuild each request, score it through VW), the logged scores read from the
   full records (``companions=False``) and the default (the logged scores read from the segments' what-if
   companions, logging_schema.companions), --repeats times each; medians. The three tables are checked equal (bit
   for bit). Also timed, as often: reading the log alone, full records and companions (read, CRC32-checked, parsed
   into the replay view; nothing done with the records) - the floors under each path.
3. What logging the scores costs: bytes per logged decision with and without them (the same events, the field
   cleared), and the time serving adds per decision (``ndarray.tolist`` + one ``extend`` of n doubles), against
   the in-process Rank mean of step 1.
4. Where a replay from companions spends its time: one more run under cProfile, its time split by stage (shares of
   the profiled total; profiling inflates the parts that make many small calls, so the shares are indicative).
5. What the companions cost: their bytes per decision beside the segments', and the log writer's CPU per record
   (process CPU time from the first submit to close, over the same 5,000 decision records built as serving builds
   them - ``views.WireRecord``, deferred - into a fresh log): without companions, with the row companion alone, and
   with the row and columnar ones (logging_schema.columnar), alternating; medians.
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.replay_bench import Args as ServeArgs, serve
from evaluators.replay.run import ReplayStats, replay
from logging_schema.columnar import columnar_path, read_columnar
from logging_schema.companions import SUFFIX, iter_located
from logging_schema.reader import iter_records
from logging_schema.segments import log_segments
from logging_schema.views import ReplayEntry, ReplayRecord, WireRecord
from logging_schema.writer import DeferredRecord, LogWriter
from recsys_rl.config import ServiceConfig, SurfaceConfig
from recsys_rl.logging.v1 import events_pb2

SPEC = "logged@cap=0.2"


def _replay_seconds(data_dir: Path, config: ServiceConfig, logged_scores: bool, decisions: int,
                    companions: bool = True) -> tuple[float, object]:
    stats = ReplayStats()
    started = time.perf_counter()
    table = replay(data_dir, SPEC, config=config, progress=False, stats=stats, logged_scores=logged_scores,
                   companions=companions)
    seconds = time.perf_counter() - started
    expected = (decisions, 0) if logged_scores else (0, decisions)
    if (stats.from_logged_scores, stats.rescored) != expected:
        raise RuntimeError(f"logged_scores={logged_scores}: {stats.from_logged_scores} from logged scores, "
                           f"{stats.rescored} re-scored of {decisions}")
    used = stats.read.companions
    if used != (stats.read.segments if logged_scores and companions else 0):
        raise RuntimeError(f"companions={companions}: {used} of {stats.read.segments} segments read from companions")
    return seconds, table


def _read_seconds(data_dir: Path) -> float:
    started = time.perf_counter()
    for _ in iter_records(data_dir / "logs", record_type=ReplayRecord):
        pass
    return time.perf_counter() - started


def _read_companions_seconds(data_dir: Path) -> float:
    started = time.perf_counter()
    for _ in iter_located(data_dir / "logs", entry_type=ReplayEntry, record_type=ReplayRecord):
        pass
    return time.perf_counter() - started


def _read_columnar_seconds(data_dir: Path) -> float:
    """Reading every segment's columnar companion (file, CRC32, Arrow decoding): the columnar path's floor."""
    started = time.perf_counter()
    for segment in log_segments(data_dir / "logs"):
        read_columnar(segment)
    return time.perf_counter() - started


def _file_bytes(data_dir: Path) -> tuple[int, int, int]:
    """Bytes of the log's segments, of their row companions and of their columnar companions."""
    segments = log_segments(data_dir / "logs")
    row = [p.with_suffix(SUFFIX) for p in segments if p.with_suffix(SUFFIX).is_file()]
    columnar = [columnar_path(p) for p in segments if columnar_path(p).is_file()]
    return (sum(p.stat().st_size for p in segments), sum(p.stat().st_size for p in row),
            sum(p.stat().st_size for p in columnar))


def _writer_cpu_us(data_dir: Path, sample: int, repeats: int) -> tuple[float, float, float, int]:
    """Median log-writer CPU µs per decision record (process CPU, first submit to close): without companions, with
    the row companion alone, and with both (row and columnar).

    The payloads are parsed into WireRecords up front (serving builds them on the writer's thread from the request
    it holds, as bytes already; here building is a list lookup), so what is timed is the writer's own work."""
    payloads = [r.SerializeToString() for r, _ in zip(
        (r for r in iter_records(data_dir / "logs") if r.WhichOneof("event") == "decision"), range(sample))]
    variants = ((False, False), (True, False), (True, True))  # (companions, columnar)
    samples: dict[tuple[bool, bool], list[float]] = {v: [] for v in variants}
    for run in range(repeats):
        for companions, columnar in variants:
            messages = [WireRecord.FromString(p) for p in payloads]
            with tempfile.TemporaryDirectory(prefix="whatif_writer_", dir=data_dir) as out:
                started = time.process_time()
                writer = LogWriter(Path(out), companions=companions, columnar=columnar, rotate_bytes=16 << 20)
                for message in messages:
                    writer.submit(DeferredRecord(lambda m=message: m))
                writer.close()
                samples[(companions, columnar)].append((time.process_time() - started) / len(messages) * 1e6)
    none, row, both = (statistics.median(samples[v]) for v in variants)
    return none, row, both, len(payloads)


def _log_bytes(data_dir: Path, sample: int) -> tuple[float, float, list[float]]:
    """Mean serialized bytes per decision record with and without candidate scores, and one event's scores."""
    with_scores, without, scores = [], [], []
    for record in iter_records(data_dir / "logs"):
        if record.WhichOneof("event") != "decision":
            continue
        with_scores.append(record.ByteSize())
        scores = list(record.decision.candidate_scores)
        record.decision.ClearField("candidate_scores")
        without.append(record.ByteSize())
        if len(with_scores) >= sample:
            break
    return statistics.fmean(without), statistics.fmean(with_scores), scores


def _logging_cost_us(scores: list[float], repeats: int = 20_000) -> float:
    """Median µs of what serving adds per decision: the scores array to a list, and one extend into the event."""
    array = np.asarray(scores, dtype=np.float64)
    samples = []
    for _ in range(repeats):
        event = events_pb2.DecisionEvent()
        started = time.perf_counter_ns()
        event.candidate_scores.extend(array.tolist())
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1e3


# Stages of a replay from companions, by the functions that do them (module file, function name); the loop's own
# time is _replay_pass's self time.
_STAGES = (
    ("replaying whole segments from their columnar companions (`read_columnar`, `ColumnarReplay.frames`)",
     (("columnar.py", "read_columnar"), ("columnar.py", "frames"))),
    ("reading and parsing row companions (`iter_segment_located`)", (("companions.py", "_segment_records"),)),
    ("appending each decision's slots and columns (`DecisionColumns.add`)", (("columns.py", "add"),)),
    ("resolving each decision's target policy (`policy_for`, shield, `_reusable_raw`, `batchable`, outside check)",
     (("targets.py", "policy_for"), ("shield.py", "policy"), ("run.py", "_reusable_raw"), ("batched.py", "batchable"),
      ("outside.py", "explored_outside"))),
    ("deferring it to the batch (`PendingBatch.add`)", (("batched.py", "add"),)),
    ("per chunk: batched ε-greedy propensities and the chunk's DataFrame (`flush`)", (("run.py", "flush"),)),
    ("the per-record loop itself (`_replay_pass` self time)", ()),
    ("joining rewards and building the table (`join_rewards`, `_feedback_table`)",
     (("tables.py", "join_rewards"), ("run.py", "_feedback_table"))),
)


def _profile(data_dir: Path, config: ServiceConfig) -> tuple[float, list[tuple[str, float]]]:
    """One replay from companions under cProfile: (profiled seconds, [(stage, seconds)])."""
    profile = cProfile.Profile()
    profile.enable()
    replay(data_dir, SPEC, config=config, progress=False)
    profile.disable()
    entries = pstats.Stats(profile).stats  # type: ignore[attr-defined]

    def cumulative(file: str, name: str) -> float:
        return sum(v[3] for (path, _, function), v in entries.items() if path.endswith(file) and function == name)

    total = cumulative("run.py", "replay")
    rows = [(stage, sum(cumulative(f, n) for f, n in functions)) for stage, functions in _STAGES]
    loop = sum(v[2] for (path, _, function), v in entries.items()
               if path.endswith("run.py") and function == "_replay_pass")
    return total, [(stage, loop if not functions else seconds)
                   for (stage, seconds), (_, functions) in zip(rows, _STAGES)]


def run(decisions: int, candidates: int, slate_size: int, repeats: int) -> None:
    config = ServiceConfig(surfaces={"default": SurfaceConfig(decision_budget_ms=1e6)})
    with tempfile.TemporaryDirectory(prefix="whatif_bench_") as tmp:
        data_dir = Path(tmp)
        serving_s = serve(data_dir, config, ServeArgs(decisions=decisions, candidates=candidates,
                                                      slate_size=slate_size))
        rescore, logged, companion, reading, reading_companions, reading_columns = [], [], [], [], [], []
        differing = None
        for _ in range(repeats):
            seconds, slow = _replay_seconds(data_dir, config, False, decisions)
            rescore.append(seconds)
            seconds, full = _replay_seconds(data_dir, config, True, decisions, companions=False)
            logged.append(seconds)
            seconds, fast = _replay_seconds(data_dir, config, True, decisions)
            companion.append(seconds)
            reading.append(_read_seconds(data_dir))
            reading_companions.append(_read_companions_seconds(data_dir))
            reading_columns.append(_read_columnar_seconds(data_dir))
            if not (fast.equals(full) and fast.equals(slow)):  # type: ignore[attr-defined]
                raise RuntimeError("the three replay paths gave different tables")
            differing = int((fast["target_pscore"] != slow["target_pscore"]).sum())  # type: ignore[index]
            rows = fast.height  # type: ignore[attr-defined]
        assert differing is not None
        before, after, scores = _log_bytes(data_dir, 5_000)
        cost_us = _logging_cost_us(scores)
        segment_bytes, companion_bytes, columnar_bytes = _file_bytes(data_dir)
        cpu_without, cpu_with, cpu_both, cpu_records = _writer_cpu_us(data_dir, 5_000, repeats)
        profiled, stages = _profile(data_dir, config)

    slow_s, full_s, fast_s = statistics.median(rescore), statistics.median(logged), statistics.median(companion)
    read_s, read_c_s = statistics.median(reading), statistics.median(reading_companions)
    read_col_s = statistics.median(reading_columns)
    rank_us = serving_s / decisions * 1e6
    print(f"`replay --policy {SPEC}` on {decisions:,} served decisions, {candidates} candidates, slate {slate_size}, "
          f"ε-greedy (median of {repeats} alternating runs each; {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.machine()}). Rows whose target propensity differs between the "
          f"paths: {differing:,} of {rows:,} (ε-greedy reads only the order of the scores); the three tables are "
          f"equal.\n")
    print("| replay path | seconds | decisions/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| re-scoring through VW (`logged_scores=False`, today's path) | {slow_s:.2f} | {decisions / slow_s:,.0f} "
          f"| 1.00× |")
    print(f"| from the logged scores in the full records (`companions=False`) | {full_s:.2f} "
          f"| {decisions / full_s:,.0f} | {slow_s / full_s:.1f}× |")
    print(f"| **from the logged scores in the what-if companions (default)** | {fast_s:.2f} "
          f"| {decisions / fast_s:,.0f} | **{slow_s / fast_s:.1f}×** |")
    print(f"| reading the full records alone (no replay: that path's floor) | {read_s:.2f} | {decisions / read_s:,.0f} "
          f"| {slow_s / read_s:.1f}× |")
    print(f"| reading the row companions alone (no replay) | {read_c_s:.2f} | {decisions / read_c_s:,.0f} "
          f"| {slow_s / read_c_s:.1f}× |")
    print(f"| reading the columnar companions alone (no replay: the default path's floor) | {read_col_s:.2f} "
          f"| {decisions / read_col_s:,.0f} | {slow_s / read_col_s:.1f}× |")
    ratio = slow_s / fast_s
    print(f"\nGoal (issue 11, Measure): `logged@cap=X` replay ≥ 25× re-scoring on the same decisions: {ratio:.1f}×, "
          f"{'met' if ratio >= 25 else 'not met'}. The default path replays each segment whose every decision is the "
          f"common what-if (own model version and λ, capped ε-greedy, no shield active, no outside exploration, finite "
          f"scores, no item twice) at once from its columnar companion (`evaluators.replay.columnar`); other segments "
          f"take the per-record path through the row companions. A log of several streams (`serve --workers N`) is "
          f"replayed the same way stream by stream, its rows sorted into the merged log's order (this bench: one stream) "
          f"(13.0× in this section's run before the columnar companions, 2026-12-05 13:09 UTC).")
    print(f"\nLog size: segments {segment_bytes / decisions:,.0f} B per decision; row companions "
          f"{companion_bytes / decisions:,.0f} B per decision beside them (+{companion_bytes / segment_bytes * 100:.1f}%), "
          f"columnar companions {columnar_bytes / decisions:,.0f} B (+{columnar_bytes / segment_bytes * 100:.1f}%); "
          f"with both {(segment_bytes + companion_bytes + columnar_bytes) / decisions:,.0f} B. Log-writer CPU per "
          f"decision record ({cpu_records:,} records, median of {repeats}): {cpu_without:.1f} µs without companions, "
          f"{cpu_with:.1f} µs with the row companion (+{cpu_with - cpu_without:.1f} µs), {cpu_both:.1f} µs with both "
          f"(+{cpu_both - cpu_without:.1f} µs, {(cpu_both - cpu_without) / rank_us * 100:.2f}% of the in-process Rank "
          f"mean; the columnar one alone +{cpu_both - cpu_with:.1f} µs).")
    print(f"\nWhere a replay from companions spends its time (one run under cProfile, {profiled:.2f} s profiled; "
          f"shares of that, indicative: profiling inflates the parts made of many small calls). Reading the columnar "
          f"companions is {read_col_s / fast_s * 100:.0f}% of the unprofiled replay:\n")
    print("| stage | share |")
    print("|---|---|")
    for stage, seconds in stages:
        print(f"| {stage} | {seconds / profiled * 100:.0f}% |")
    print(f"\nLogging the scores: {before:,.0f} → {after:,.0f} bytes per decision record "
          f"(+{after - before:,.0f} B, +{(after / before - 1) * 100:.1f}%; mean of 5,000). Serving adds "
          f"{cost_us:.1f} µs per decision (median: `tolist` + one `extend` of {candidates} doubles), "
          f"{cost_us / rank_us * 100:.2f}% of the in-process Rank mean of this run ({rank_us:,.0f} µs).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--slate-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    ns = parser.parse_args(argv)
    run(ns.decisions, ns.candidates, ns.slate_size, ns.repeats)


if __name__ == "__main__":
    main()
