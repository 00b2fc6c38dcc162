"""``replay`` on Spark: the local replay's table, with the log's segments replayed on the executors.

1. The driver lists the log's segments (``reader.log_streams``: every worker stream, in ``iter_records``' stream
   order) and hands them out, one task per segment. Each task replays its segment with the local replay's own
   per-decision code (``run._replay_pass`` over ``run.segment_records``, or the segment replayed at once from its
   columnar companion where usable (``columnar.stream_located_or_frames``): companion or full records, logged scores,
   batched ε-greedy, re-scoring), and emits its decision rows, its outcome rows and its ReplayStats as Arrow.
2. Every row carries its place in the merged log (``reader.merge_streams``' key: the stream's clock, the stream's
   rank, the segment, the record's place in it; :mod:`evaluators.replay.places`, which the local replay of a
   multi-stream log uses too). A stream's clock runs across its segments, so the driver adds
   to each segment's own running clock the largest record time of the stream's earlier segments (collected with
   the stats); the key is then exactly the local reader's.
3. The rows are repartitioned by ``event_id``; each partition sorts its decisions and outcomes by that key
   (``join_rewards`` keeps the first of a repeated outcome id, in log order) and runs the local ``join_rewards`` and
   ``run._feedback_table``. The result is the local table's rows; ReplayStats (read, join, counters) are merged
   from the tasks and equal the local ones.

Shipped: the target's spec, the surface configuration and what-if shield (pickled with the tasks) and, for a
model target (a version, ``current``, a version dir), the model's bytes as one broadcast; each executor process
loads it into VW once (``_resolved``: a module-level cache keyed by the model's digest and the plan) and keeps it
for the tasks it runs. ``logged@...`` loads the versions it re-scores with from the registry, per executor process,
as the local replay does. The log (and ``models/``, ``shield/``) must be readable at the same path from every
executor: a shared filesystem (docs/scaling.md).

Refused (they need the whole table before a row can be computed): ``--reward-model`` (cross-fitted over all
events) and ``--embedding`` (k-means over every candidate, a second pass of both policies' distributions).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from evaluators.replay.run import (
    ReplayStats, _feedback_table, _replay_pass, _surface_config, replay_long_term, segment_records,
)
from evaluators.replay.columnar import ColumnarReplay, stream_located_or_frames
from evaluators.replay.places import MERGE_KEY, Places
from evaluators.replay.shield import ReplayShield, what_if_rules
from evaluators.replay.targets import PolicySpec, TargetPolicy, model_of, parse_policy_spec, resolve_policy
from logging_schema.reader import ReadStats, SegmentFormatError, log_streams
from logging_schema.tables import JoinStats, join_rewards, outcomes_frame
from recsys_rl.config import ServiceConfig, SurfaceConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.shield.rules import ShieldRules

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_KEY = MERGE_KEY  # a record's place in the merged log (module docstring, 2)
_O = "o_"  # outcome columns' prefix in the rows of step 1 (decisions and outcomes share event_id, item_id, ...)
_SPARK_TYPES = {pl.String: "string", pl.Int32: "int", pl.Int64: "bigint", pl.Float64: "double",
                pl.Boolean: "boolean", pl.Binary: "binary"}


@dataclass(frozen=True)
class ReplayPlan:
    """What every task needs (pickled with the task); ``model``: a broadcast of (version, bytes), or None."""

    data_dir: str
    spec: PolicySpec
    surface: str
    surface_config: SurfaceConfig
    what_if: ShieldRules | None
    since: float | None
    logged_scores: bool
    companions: bool
    model: Any
    digest: str  # of the model and the plan's pickled state: the executor cache's key


_RESOLVED: dict[str, tuple[TargetPolicy, ReplayShield]] = {}


def _resolved(plan: ReplayPlan) -> tuple[TargetPolicy, ReplayShield]:
    """The target and shields of ``plan``, built once per executor process (VW loads the shipped model once)."""
    found = _RESOLVED.get(plan.digest)
    if found is None:
        _RESOLVED.clear()  # one plan at a time: a model stays loaded only while its replay runs tasks here
        data_dir = Path(plan.data_dir)
        long_term = replay_long_term(data_dir, plan.surface_config)
        model = plan.model.value if plan.model is not None else None
        target = resolve_policy(plan.spec, data_dir, plan.surface_config, long_term=long_term, model=model)
        found = _RESOLVED[plan.digest] = (target, ReplayShield(data_dir, plan.surface_config, plan.what_if))
    return found


# --- step 1: one segment → its decision and outcome rows, and its stats ------------------------------------------


def _replay_segment(plan: ReplayPlan, rank: int, segment: int, path: str, stream: str) -> pl.DataFrame:
    target, shields = _resolved(plan)
    stats = ReplayStats()
    places = Places(plan.surface)
    located = plan.logged_scores and plan.companions
    error = None
    try:
        if located:  # its columns when usable (evaluators.replay.columnar), as the local replay reads the segment
            columnar = ColumnarReplay(plan.surface, target, shields, plan.since, stats)
            records = stream_located_or_frames(stream, [Path(path)], stats.read, columnar, places, first=segment)
        else:
            records = places.watch(segment_records(Path(path), stream, stats, located=False), segment)
        decisions, outcomes = _replay_pass(records, plan.surface, target, stats, None, False, plan.since, shields,
                                           plan.logged_scores)
    except (InvalidInput, SegmentFormatError) as exc:  # raised again on the driver, as the local replay raises it
        decisions, outcomes = [], [outcomes_frame([])]
        error = (exc.field, exc.reason) if isinstance(exc, InvalidInput) else (str(exc),)
    where = [pl.lit(rank, pl.Int32).alias("rank"), pl.lit(segment, pl.Int32).alias("segment")]
    parts = [pl.DataFrame({"kind": ["stats"], "payload": [pickle.dumps((stats, places.clock, error))]},
                          schema={"kind": pl.String, "payload": pl.Binary}).with_columns(where)]
    ranked = (pl.lit(rank, pl.Int32).alias("rank"),)
    if decisions:
        parts.append(places.decision_keys(pl.concat(decisions, rechunk=True))
                     .with_columns(*ranked, pl.lit("decision").alias("kind")))
    outcome_rows = pl.concat(outcomes, how="vertical")
    if outcome_rows.height:
        parts.append(places.outcome_keys(outcome_rows.rename(lambda c: _O + c)).with_columns(
            pl.Series("event_id", outcome_rows.get_column("event_id")), *ranked, pl.lit("outcome").alias("kind")))
    return pl.concat(parts, how="diagonal_relaxed")


@functools.cache
def _step1_schema() -> pl.Schema:
    from evaluators.replay.columns import DecisionColumns

    decisions = DecisionColumns().frame("", np.zeros(0)).schema
    outcomes = {_O + name: dtype for name, dtype in outcomes_frame([]).schema.items()}
    key = {"clock": pl.Int64(), "rank": pl.Int32(), "segment": pl.Int32(), "pos": pl.Int64()}
    return pl.Schema({**decisions, **outcomes, **key, "kind": pl.String(), "payload": pl.Binary()})


def _arrow(frame: pl.DataFrame, schema: pl.Schema) -> Iterator[pa.RecordBatch]:
    """``frame`` with every column of ``schema`` (missing ones null), times as integer microseconds (Spark's Arrow
    timestamps depend on the session's time zone; step 2 and the driver turn them back into UTC times)."""
    full = frame.with_columns(pl.lit(None, dtype).alias(n) for n, dtype in schema.items() if n not in frame.columns)
    full = full.select(pl.col(n).cast(pl.Int64) if isinstance(d, pl.Datetime) else pl.col(n).cast(d)
                       for n, d in schema.items())
    yield from full.to_arrow().to_batches()


def _spark_schema(schema: pl.Schema) -> str:
    return ", ".join(f"`{n}` {'bigint' if isinstance(d, pl.Datetime) else _SPARK_TYPES[type(d)]}"
                     for n, d in schema.items())


def _segments_task(batches: Iterator[pa.RecordBatch], plan: ReplayPlan) -> Iterator[pa.RecordBatch]:
    schema = _step1_schema()
    for batch in batches:
        for rank, segment, path, stream in zip(*(batch.column(c).to_pylist() for c in
                                                 ("rank", "segment", "path", "stream"))):
            yield from _arrow(_replay_segment(plan, rank, segment, path, stream), schema)


# --- step 2: one partition of events → its table rows and join stats ---------------------------------------------


@functools.cache
def _table_schema() -> pl.Schema:
    empty = _step1_schema()
    decisions = pl.DataFrame(schema={n: d for n, d in empty.items() if not n.startswith(_O) and n not in _KEY})
    joined = join_rewards(decisions.drop("kind", "payload"), outcomes_frame([]), SurfaceConfig().reward)
    return pl.Schema({**_feedback_table(joined).schema, "kind": pl.String(), "payload": pl.Binary()})


def _join_task(batches: Iterator[pa.RecordBatch], surface_config: SurfaceConfig,
               floors: dict[tuple[int, int], int]) -> Iterator[pa.RecordBatch]:
    schema, step1 = _table_schema(), _step1_schema()
    arrow = [batch for batch in batches if batch.num_rows]
    if not arrow:
        return
    rows = pl.DataFrame(pl.from_arrow(pa.Table.from_batches(arrow)))
    floor = pl.DataFrame([(r, s, f) for (r, s), f in floors.items()], orient="row",
                         schema={"rank": pl.Int32, "segment": pl.Int32, "floor": pl.Int64})
    times = [pl.col(n).cast(pl.Datetime("us", "UTC")) for n, d in step1.items() if isinstance(d, pl.Datetime)]
    rows = (rows.with_columns(times).join(floor, on=["rank", "segment"], how="left")
            .with_columns(pl.max_horizontal("clock", "floor").alias("clock"))
            .sort([*_KEY, "position"], maintain_order=True, nulls_last=True))
    decisions = rows.filter(pl.col("kind") == "decision").select(
        n for n in step1 if not n.startswith(_O) and n not in (*_KEY, "kind", "payload"))
    outcomes = rows.filter(pl.col("kind") == "outcome").select(pl.col(n).alias(n.removeprefix(_O))
                                                               for n in step1 if n.startswith(_O))
    join = JoinStats()
    table = _feedback_table(join_rewards(decisions, outcomes, {surface_config.name: surface_config.reward},
                                         stats=join))
    violations = table.filter((pl.col("target_pscore") > 0) & (pl.col("pscore") <= 0)).height
    stats = pl.DataFrame({"kind": ["stats"], "payload": [pickle.dumps((join, table.height, violations))]},
                         schema={"kind": pl.String, "payload": pl.Binary})
    yield from _arrow(pl.concat([table.with_columns(pl.lit("row").alias("kind")), stats], how="diagonal_relaxed"),
                      schema)


# --- the driver ---------------------------------------------------------------------------------------------------


def _add(into: object, part: object) -> None:
    """Sum the counters of a stats dataclass ``part`` into ``into`` (nested stats and dicts of counts too)."""
    for f in fields(into):  # type: ignore[arg-type]
        mine, theirs = getattr(into, f.name), getattr(part, f.name)
        if isinstance(mine, ReadStats | JoinStats):
            _add(mine, theirs)
        elif isinstance(mine, dict):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        else:
            setattr(into, f.name, mine + theirs)


def replay_spark(
    data_dir: Path | str, spec: str | PolicySpec, *, spark: SparkSession | None = None, master: str = "local[*]",
    surface: str = "default", config: ServiceConfig | None = None, stats: ReplayStats | None = None,
    since: float | None = None, shield: str | ShieldRules | None = None, logged_scores: bool = True,
    companions: bool = True, reward_model: bool = False, embedding: str | None = None, partitions: int | None = None,
) -> DataFrame:
    """``run.replay``'s table as a Spark DataFrame (cached; ``served_at`` a UTC timestamp), computed on ``spark``
    (default: a session on ``master``); same arguments and errors, ``stats`` merged from the tasks. ``partitions``:
    of the join by event (default: 4 per core of ``spark``, at most one per segment). Raises InvalidInput for ``reward_model`` and
    ``embedding`` (module docstring)."""
    if reward_model:
        raise InvalidInput("--reward-model", "not with --engine spark: the reward model is cross-fitted over the "
                                             "whole table; replay locally (--engine local)")
    if embedding is not None:
        raise InvalidInput("--embedding", "not with --engine spark: the MIPS columns need a second pass over the "
                                          "whole log (k-means over every candidate); replay locally (--engine local)")
    stats = stats if stats is not None else ReplayStats()
    parsed = parse_policy_spec(spec) if isinstance(spec, str) else spec
    surface_config = _surface_config(config, surface)
    data_dir = Path(data_dir).resolve()  # executors open it by this path: a shared filesystem
    log_dir = data_dir / "logs"
    if not log_dir.is_dir():
        raise InvalidInput("data_dir", f"{log_dir} does not exist (has a server written any log there?)")
    what_if = what_if_rules(shield, data_dir) if isinstance(shield, str) else shield
    model = model_of(parsed, data_dir, surface_config)
    # Resolved here first: a bad spec, version or model fails on the driver with its local error, before any task.
    resolve_policy(parsed, data_dir, surface_config, long_term=replay_long_term(data_dir, surface_config), model=model)
    tasks = [(rank, index, str(path), name) for rank, (name, segments) in enumerate(log_streams(log_dir))
             for index, path in enumerate(segments)]
    if not tasks:
        raise InvalidInput("surface", f"no decision of surface {surface!r} with a non-empty slate in {log_dir}")
    if spark is None:
        from evaluators.spark.session import spark_session

        spark = spark_session(master, app_name="recsys-rl replay")
    state = pickle.dumps((str(data_dir), parsed, surface, surface_config, what_if, since, logged_scores, companions))
    digest = hashlib.sha256(state + (model[1] if model else b"")).hexdigest()
    shipped = spark.sparkContext.broadcast(model) if model is not None else None
    plan = ReplayPlan(str(data_dir), parsed, surface, surface_config, what_if, since, logged_scores, companions,
                      shipped, digest)

    # Tasks, not segments, cost a Python worker's start and the target's resolution: a few tasks per core, each
    # replaying its share of the segments (a segment is never split: its records' places are counted within it).
    slots = spark.sparkContext.defaultParallelism
    segments = spark.createDataFrame(tasks, "rank int, segment int, path string, stream string").repartition(
        min(len(tasks), 4 * slots))
    step1 = segments.mapInArrow(functools.partial(_segments_task, plan=plan),
                                _spark_schema(_step1_schema())).persist()
    clocks: dict[tuple[int, int], int] = {}
    errors = []
    for row in step1.filter("kind = 'stats'").select("rank", "segment", "payload").collect():
        part, clock, error = pickle.loads(row["payload"])
        _add(stats, part)
        clocks[(row["rank"], row["segment"])] = clock
        errors.append(((row["rank"], row["segment"]), error))
    for _, error in sorted((e for e in errors if e[1] is not None), key=lambda e: e[0]):
        step1.unpersist()
        raise InvalidInput(*error) if len(error) == 2 else SegmentFormatError(*error)
    if stats.decisions == 0:
        step1.unpersist()
        raise InvalidInput("surface", f"no decision of surface {surface!r} with a non-empty slate in {log_dir}")
    # A segment's records' clocks start from the largest time of its stream's earlier segments.
    floors, reached = {}, {}
    for rank, index, _, _ in tasks:
        floors[(rank, index)] = reached.get(rank, -1)
        reached[rank] = max(reached.get(rank, -1), clocks[(rank, index)])
    events = step1.filter("kind != 'stats'")
    events = events.repartition(partitions or min(len(tasks), 4 * slots), "event_id")
    step2 = events.mapInArrow(functools.partial(_join_task, surface_config=surface_config, floors=floors),
                              _spark_schema(_table_schema())).persist()
    for row in step2.filter("kind = 'stats'").select("payload").collect():
        join, rows, violations = pickle.loads(row["payload"])
        _add(stats.join, join)
        stats.rows += rows
        stats.support_violations += violations
    step1.unpersist()
    if shipped is not None:
        shipped.unpersist()
    from pyspark.sql import functions as F

    return step2.filter("kind = 'row'").drop("kind", "payload").withColumn(
        "served_at", F.timestamp_micros("served_at"))




def write_table_dir(table: DataFrame, out: Path | str) -> Path:
    """Write ``table`` as a directory of parquet files at ``out`` (Spark's layout, ``_SUCCESS`` at the end; polars
    reads it as ``out/*.parquet``, Spark and ``evaluate --engine spark`` as ``out``). Written beside it and renamed
    into place, replacing an earlier table directory; a file or another directory at ``out`` is refused."""
    import shutil

    out = Path(out).resolve()
    if out.is_file() or (out.is_dir() and not (out / "_SUCCESS").exists()):
        raise InvalidInput("out", f"{out} exists and is not a table directory of an earlier replay; --engine spark "
                                  "writes a directory of parquet files there")
    partial, old = (out.with_name(f".{out.name}.{what}") for what in ("partial", "replaced"))
    for stale in (partial, old):
        shutil.rmtree(stale, ignore_errors=True)
    # Parquet timestamps as INT64 microseconds (Spark's default, INT96, is not what polars and the local table use).
    table.sparkSession.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    table.write.parquet(str(partial))
    if out.exists():
        out.rename(old)
    partial.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


__all__ = ["ReplayPlan", "replay_spark", "write_table_dir"]
