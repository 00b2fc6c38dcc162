"""``logs export --partitioned``: the feedback table as Hive-partitioned parquet, written while the log is read.

Layout: ``out/surface=NAME/date=YYYY-MM-DD/part-NNNNN.parquet`` (date of ``served_at`` in UTC; NAME
percent-encoded outside ``[A-Za-z0-9_.-]``, as Spark and polars decode it). Rows and columns are those of the
single-file export (``tables.export_parquet``) except ``surface``, which is the partition key and not stored in the
files (the Hive convention Spark expects); a reader with Hive partitioning gets it back, with ``date``.

Streaming, and still exact. Records come in log order (``reader.iter_records``: streams merged by time), and an
outcome can only count toward a decision when ``served_at <= occurred_at <= served_at + window``. So a decision's
reward is final once the log's clock (the latest record time read) has passed ``served_at + window + lateness``,
where ``lateness`` bounds how long after ``occurred_at`` an outcome is received and logged. Decisions are gathered
in chunks of at most ``batch_rows`` rows; a full chunk waits, with its decisions' outcomes beside it, until every
decision in it is final, and is then joined with ``tables.join_rewards`` (the one offline reward rule) and written.
Memory is the chunks of the last ``window + lateness`` of traffic plus one chunk being filled: it does not grow with
the log.

An outcome whose decision is not waiting is an orphan - or a decision already written, if the outcome came later
than ``lateness``. Those that could be the latter (occurred no later than the latest ``served_at + window`` written) are counted in
``PartitionedStats.late_outcomes``: when it is 0 the export equals the single-file one, otherwise the caller says
so and a larger ``lateness`` fixes it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import polars as pl

from logging_schema.reader import ReadStats, gap_of, iter_records
from logging_schema.rewards import RewardDefinition
from logging_schema.tables import JoinStats, _DecisionColumns, _OutcomeColumns, join_rewards, _micros
from logging_schema.views import TableRecord
from recsys_rl.logging.v1.events_pb2 import LogGap

DEFAULT_BATCH_ROWS = 50_000
DEFAULT_LATENESS_SECONDS = 300.0
PARTITION_KEYS = ("surface", "date")


class OutputNotEmptyError(ValueError):
    """``out`` exists and holds files, and overwriting was not asked for."""


@dataclass
class PartitionedStats:
    out: Path
    rows: int = 0
    decisions: int = 0
    outcomes: int = 0
    files: int = 0
    late_outcomes: int = 0  # could belong to a decision already written (module docstring); 0 = exact
    max_rows_held: int = 0  # decision rows in memory at once, at most (the bound the module docstring states)
    read: ReadStats = field(default_factory=ReadStats)
    join: JoinStats = field(default_factory=JoinStats)
    gaps: list[LogGap] = field(default_factory=list)


class _Chunk:
    """Decisions (as columns) and the outcomes of those decisions, until every decision's window has closed."""

    def __init__(self) -> None:
        self.decisions = _DecisionColumns()
        self.outcomes = _OutcomeColumns()
        self.rows = 0
        self.final_after_us = -1  # the clock past which every decision here is final
        self.horizon_us = -1  # the latest served_at + window here: no outcome after it counts toward this chunk
        self.event_ids: list[str] = []


def _add_join_stats(total: JoinStats, part: JoinStats) -> None:
    for name in vars(total):
        setattr(total, name, getattr(total, name) + getattr(part, name))


class _PartitionWriter:
    """Part files under ``root``, numbered per partition; every frame written is at most one chunk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.next_part: dict[tuple[str, str], int] = {}
        self.files = 0

    def write(self, joined: pl.DataFrame) -> None:
        dated = joined.with_columns(date=pl.col("served_at").dt.convert_time_zone("UTC").dt.date().cast(pl.String))
        for (surface, date), part in dated.partition_by(*PARTITION_KEYS, as_dict=True, maintain_order=True).items():
            key = (str(surface), str(date))
            number = self.next_part.get(key, 0)
            self.next_part[key] = number + 1
            directory = self.root / f"surface={quote(key[0], safe='')}" / f"date={key[1]}"
            directory.mkdir(parents=True, exist_ok=True)
            part.drop(*PARTITION_KEYS).write_parquet(directory / f"part-{number:05d}.parquet")
            self.files += 1


def _prepare(out: Path, overwrite: bool) -> Path:
    """The staging directory beside ``out``; refuses a non-empty ``out`` unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise OutputNotEmptyError(f"--out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputNotEmptyError(f"--out: {out} is not empty (pass --overwrite to replace it)")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an export that was stopped
    staging.mkdir(parents=True)
    return staging


def export_partitioned(
    data_dir: Path,
    out: Path,
    rewards: Mapping[str, RewardDefinition] | RewardDefinition,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    lateness_seconds: float = DEFAULT_LATENESS_SECONDS,
    overwrite: bool = False,
) -> PartitionedStats:
    """Write ``data_dir/logs`` as Hive-partitioned parquet under ``out`` (module docstring).

    The files are written to a staging directory beside ``out`` and moved into place at the end, so ``out`` never
    holds half an export. Raises OutputNotEmptyError for a non-empty ``out`` without ``overwrite``, ValueError for a
    surface without a reward definition, FileNotFoundError when there are no logs.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows: must be at least 1, got {batch_rows}")
    if not lateness_seconds >= 0:
        raise ValueError(f"lateness_seconds: must be >= 0, got {lateness_seconds}")
    log_dir = Path(data_dir) / "logs"
    if not log_dir.is_dir():
        raise FileNotFoundError(f"data_dir: {log_dir} does not exist (has the server written any log?)")
    out = Path(out)
    staging = _prepare(out, overwrite)
    definitions = rewards if isinstance(rewards, Mapping) else None
    lateness_us = round(lateness_seconds * 1_000_000)

    def window_us(surface: str) -> int:
        if definitions is None:
            return rewards.window_us  # type: ignore[union-attr]
        if surface not in definitions:
            raise ValueError(f"rewards: no reward definition for surface {surface!r}")
        return definitions[surface].window_us

    stats = PartitionedStats(out=out)
    writer = _PartitionWriter(staging)
    waiting: list[_Chunk] = []  # full chunks, oldest first
    filling = _Chunk()
    owner: dict[str, _Chunk] = {}  # event id of a decision held in memory -> its chunk
    held = 0
    clock = -1
    written_horizon = -1  # the latest served_at + window of any decision written so far

    def flush(chunk: _Chunk) -> None:
        nonlocal held, written_horizon
        written_horizon = max(written_horizon, chunk.horizon_us)
        join = JoinStats()
        joined = join_rewards(chunk.decisions.to_frame(), chunk.outcomes.to_frame(), rewards, stats=join)
        _add_join_stats(stats.join, join)
        writer.write(joined)
        stats.rows += joined.height
        held -= chunk.rows
        for event_id in chunk.event_ids:
            if owner.get(event_id) is chunk:
                del owner[event_id]

    for record in iter_records(log_dir, stats=stats.read, record_type=TableRecord):
        kind = record.WhichOneof("event")
        if kind == "gap":
            stats.gaps.append(gap_of(record))
            continue
        event = record.decision if kind == "decision" else record.outcome
        at = _micros(event.served_at if kind == "decision" else event.received_at)
        if kind == "decision":
            stats.decisions += 1
            rows = len(event.slate)
            filling.decisions.add(event)
            filling.rows += rows
            filling.event_ids.append(event.event_id)
            horizon = at + window_us(event.surface)
            filling.horizon_us = max(filling.horizon_us, horizon)
            filling.final_after_us = max(filling.final_after_us, horizon + lateness_us)
            owner.setdefault(event.event_id, filling)  # join_rewards keys a repeated event id by its first decision
            held += rows
            stats.max_rows_held = max(stats.max_rows_held, held)
            if filling.rows >= batch_rows:
                waiting.append(filling)
                filling = _Chunk()
        else:
            stats.outcomes += 1
            if not event.HasField("received_at"):
                at = _micros(event.occurred_at)
            chunk = owner.get(event.event_id)
            if chunk is not None:
                chunk.outcomes.add(event)
            elif _micros(event.occurred_at) <= written_horizon:
                stats.late_outcomes += 1  # might belong to a decision already written: not exact
            else:
                stats.join.outcomes += 1  # an orphan: counted as join_rewards counts it
                stats.join.orphan_outcomes += 1
        clock = max(clock, at)
        while waiting and waiting[0].final_after_us < clock:
            flush(waiting.pop(0))
    for chunk in [*waiting, filling]:
        if chunk.event_ids:
            flush(chunk)
    stats.files = writer.files
    _replace(staging, out)
    return stats


def _replace(staging: Path, out: Path) -> None:
    """Move the finished export into place (an empty or overwritten ``out`` goes)."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)


def read_partitioned(out: Path) -> pl.LazyFrame:
    """The export under ``out`` as one lazy table, partition keys typed (surface: str, date: date)."""
    return pl.scan_parquet(out, hive_partitioning=True, hive_schema={"surface": pl.String, "date": pl.Date})
