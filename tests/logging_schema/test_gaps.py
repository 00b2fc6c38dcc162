"""LogGap records: every reader path surfaces them (read_log, ReadStats, the tables, export, replay's counts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from logging_schema.reader import ReadStats, iter_records, read_log
from logging_schema.rewards import RewardDefinition
from logging_schema.tables import describe_gaps, export_parquet, read_tables
from logging_schema.writer import LogWriter
from recsys_rl.logging.v1.events_pb2 import LogGap, LogRecord
from tests.logging_schema.builders import BASE_US, decision_record, outcome_record, set_micros


def gap_record(decisions: dict[str, int], *, refused: int = 0, first_us: int = BASE_US,
               last_us: int = BASE_US + 90_000_000) -> LogRecord:
    gap = LogGap(decisions_unlogged=sum(decisions.values()), outcomes_refused=refused,
                 reason="ENOSPC: No space left on device")
    gap.decisions_unlogged_by_surface.update(decisions)
    set_micros(gap.first_unlogged_at, first_us)
    set_micros(gap.last_unlogged_at, last_us)
    set_micros(gap.recorded_at, last_us + 1_000_000)
    return LogRecord(gap=gap)


def _write_log(log_dir: Path) -> None:
    with LogWriter(log_dir) as writer:
        writer.submit(decision_record("e1"))
        writer.submit(gap_record({"default": 40, "home": 2}, refused=3))
        writer.submit(outcome_record("e1", "a", "click"))
        writer.submit(decision_record("e2"))


def test_read_log_lists_gaps_and_counts_them_apart_from_damage(tmp_path: Path) -> None:
    _write_log(tmp_path)
    result = read_log(tmp_path)
    assert [d.event_id for d in result.decisions] == ["e1", "e2"]
    assert len(result.outcomes) == 1
    assert [g.decisions_unlogged for g in result.gaps] == [42]
    assert dict(result.gaps[0].decisions_unlogged_by_surface) == {"default": 40, "home": 2}
    stats = result.stats
    assert (stats.records, stats.gaps, stats.decisions_unlogged, stats.outcomes_refused) == (4, 1, 42, 3)
    assert stats.corrupt_records == stats.torn_tail_records == 0
    view_stats = ReadStats()
    list(iter_records(tmp_path, stats=view_stats))
    assert view_stats.decisions_unlogged == 42


def test_tables_and_export_carry_the_gaps(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    _write_log(log_dir)
    tables = read_tables(log_dir)
    assert tables.decisions.get_column("event_id").unique().sort().to_list() == ["e1", "e2"]
    assert tables.outcomes.height == 1  # the gap did not become an empty outcome row
    assert tables.stats.corrupt_records == 0 and tables.stats.gaps == 1  # the table view parses gaps too
    assert [g.decisions_unlogged for g in tables.gaps] == [42]
    stats = export_parquet(tmp_path, tmp_path / "out.parquet",
                           RewardDefinition(weights={"click": 1.0}, attribution_window_seconds=5.0))
    assert stats.decisions == 2 and len(stats.gaps) == 1
    line = describe_gaps(stats.gaps)
    assert "42 decisions served unlogged" in line and "3 outcomes refused" in line
    assert "2023-11-14T22:13:20Z..2023-11-14T22:14:50Z" in line
    assert describe_gaps([]) == ""


def test_logs_export_prints_a_line_naming_the_unlogged_decisions(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_rl.cli import main

    _write_log(tmp_path / "logs")
    assert main(["logs", "export", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out.parquet")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("exported ")
    assert lines[1].startswith("log gaps: 42 decisions served unlogged") and "2023-11-14T22:13:20Z" in lines[1]
