"""The partitioned export equals the single-file one, holds a bounded number of rows, and refuses a used --out."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from logging_schema.lake import OutputNotEmptyError, export_partitioned, read_partitioned
from logging_schema.rewards import RewardDefinition
from logging_schema.segments import stream_dir
from logging_schema.tables import export_parquet
from logging_schema.writer import LogWriter
from tests.logging_schema.builders import decision_record, outcome_record, set_micros

START_US = 1_764_892_800_000_000 - 30_000_000  # 2025-12-04T23:59:30Z: decisions fall on two dates
REWARDS = {"home": RewardDefinition(weights={"click": 1.0}, attribution_window_seconds=5.0),
           "search": RewardDefinition(weights={"click": 1.0, "purchase": 4.0}, attribution_window_seconds=10.0)}


def _write_log(data_dir: Path, n: int) -> None:
    """``n`` decisions 1 s apart over two surfaces and two workers' streams, with clicks, purchases, late and orphan
    outcomes, through the real LogWriter."""
    writers = [LogWriter(stream_dir(data_dir / "logs", k), rotate_bytes=8 << 10) for k in range(2)]
    try:
        for i in range(n):
            served = START_US + i * 1_000_000
            surface = "home" if i % 3 else "search"
            writer = writers[i % 2]
            writer.submit(decision_record(f"e{i}", served_at_us=served, surface=surface, items=("a", "b")))
            if i % 7 == 0:
                writer.submit(outcome_record(f"orphan{i}", "a", "click", occurred_at_us=served, surface=surface))
            if i % 2 == 0:
                writer.submit(outcome_record(f"e{i}", "b", "click", occurred_at_us=served + 500_000, surface=surface))
            if i % 5 == 0:
                writer.submit(outcome_record(f"e{i}", "a", "purchase", occurred_at_us=served + 900_000,
                                             surface=surface))
    finally:
        for writer in writers:
            writer.close()


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("event_id", "position")


def test_partitioned_export_equals_the_single_file_export(tmp_path: Path) -> None:
    _write_log(tmp_path, 120)
    single = tmp_path / "single.parquet"
    export_parquet(tmp_path, single, REWARDS)
    stats = export_partitioned(tmp_path, tmp_path / "lake", REWARDS, batch_rows=16, lateness_seconds=2.0)

    expected = pl.read_parquet(single)
    back = read_partitioned(tmp_path / "lake").collect()
    assert stats.late_outcomes == 0 and stats.rows == expected.height == 240
    assert back.get_column("date").unique().sort().cast(pl.String).to_list() == ["2025-12-04", "2025-12-05"]
    assert sorted(p.name for p in (tmp_path / "lake").iterdir()) == ["surface=home", "surface=search"]
    assert _sorted(back.select(expected.columns)).equals(_sorted(expected))
    assert expected["reward"].sum() > 0 and stats.join.orphan_outcomes == 18
    assert max(pl.read_parquet(p).height for p in (tmp_path / "lake").rglob("*.parquet")) <= 16


def test_rows_held_stay_within_one_batch_plus_the_window(tmp_path: Path) -> None:
    _write_log(tmp_path, 300)
    stats = export_partitioned(tmp_path, tmp_path / "lake", REWARDS, batch_rows=8, lateness_seconds=2.0)
    # Decisions 1 s apart, 2 rows each: the longest window (10 s) plus lateness (2 s) spans 13 decisions.
    assert stats.rows == 600 and stats.max_rows_held <= 8 + 2 * 13 + 2


def test_an_answer_later_than_the_lateness_is_counted_and_a_larger_lateness_makes_the_export_exact(
        tmp_path: Path) -> None:
    # A click that occurred 1 s after e0 was served (inside its window) but reached the log 30 s later.
    with LogWriter(tmp_path / "logs") as writer:
        for i in range(40):
            served = START_US + i * 1_000_000
            writer.submit(decision_record(f"e{i}", served_at_us=served, surface="home", items=("a", "b")))
            if i == 30:
                late = outcome_record("e0", "a", "click", occurred_at_us=START_US + 1_000_000, surface="home")
                set_micros(late.outcome.received_at, served)
                writer.submit(late)
    single = tmp_path / "single.parquet"
    export_parquet(tmp_path, single, REWARDS)
    expected = _sorted(pl.read_parquet(single))
    assert expected["reward"].sum() == 1.0

    hasty = export_partitioned(tmp_path, tmp_path / "hasty", REWARDS, batch_rows=4, lateness_seconds=10.0)
    assert hasty.late_outcomes == 1
    assert read_partitioned(tmp_path / "hasty").collect()["reward"].sum() == 0.0

    patient = export_partitioned(tmp_path, tmp_path / "patient", REWARDS, batch_rows=4, lateness_seconds=60.0)
    assert patient.late_outcomes == 0
    assert _sorted(read_partitioned(tmp_path / "patient").collect().select(expected.columns)).equals(expected)


def test_a_non_empty_out_is_refused_unless_overwrite(tmp_path: Path) -> None:
    _write_log(tmp_path, 10)
    out = tmp_path / "lake"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputNotEmptyError, match="not empty"):
        export_partitioned(tmp_path, out, REWARDS)
    assert (out / "keep.txt").exists()
    export_partitioned(tmp_path, out, REWARDS, overwrite=True)
    assert not (out / "keep.txt").exists() and list(out.rglob("part-00000.parquet"))
