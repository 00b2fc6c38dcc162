"""Polars tables from logs, the reward join on hand-made tables, and the parquet export."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

import logging_schema.tables as tables_module
from logging_schema.reader import read_log
from logging_schema.rewards import RewardDefinition
from logging_schema.tables import (
    DECISION_SCHEMA,
    JoinStats,
    decisions_frame,
    export_parquet,
    join_rewards,
    load_tables,
    outcomes_frame,
    read_tables,
)
from logging_schema.writer import LogWriter
from recsys_rl.logging.v1.events_pb2 import OutcomeEvent
from recsys_rl.ranking.v1.ranking_service_pb2 import SERVING_MODE_BASELINE_FALLBACK
from tests.logging_schema.builders import BASE_US, decision_record, make_decision, make_outcome, outcome_record

WINDOW_US = 5_000_000
CLICK_PURCHASE = RewardDefinition(weights={"click": 1.0, "purchase": 5.0}, attribution_window_seconds=5.0)


def test_decisions_frame_has_one_row_per_slate_position() -> None:
    fallback = make_decision("e2", items=("x",), served_at_us=BASE_US + 1_234_567, n_candidates=4)
    fallback.serving_mode = SERVING_MODE_BASELINE_FALLBACK
    frame = decisions_frame([make_decision("e1"), fallback])

    assert frame.schema == pl.Schema(DECISION_SCHEMA)
    assert frame.select("event_id", "position", "item_id").rows() == [
        ("e1", 0, "a"), ("e1", 1, "b"), ("e1", 2, "c"), ("e2", 0, "x"),
    ]  # fmt: skip
    e2 = frame.row(3, named=True)
    assert e2["served_at"] == datetime(2023, 11, 14, 22, 13, 21, 234_567, tzinfo=timezone.utc)
    assert e2["serving_mode"] == "baseline_fallback"
    assert (e2["n_candidates"], e2["slate_size"], e2["algorithm"], e2["exploration_cap"]) == (4, 1, "epsilon_greedy", 0.1)
    e1 = frame.filter(pl.col("event_id") == "e1")
    assert e1["propensity"].to_list() == [0.9, 0.5, 0.5]
    assert e1["slate_propensity"].to_list() == pytest.approx([0.225] * 3)
    assert e1["explored"].to_list() == [False, True, True]
    assert e1["serving_mode"].unique().to_list() == ["learned"]
    assert decisions_frame([]).schema == pl.Schema(DECISION_SCHEMA)


def test_outcome_without_occurred_at_takes_received_at() -> None:
    outcome = OutcomeEvent(event_id="e1", item_id="a", outcome="click", value=1.0)
    outcome.received_at.seconds = BASE_US // 1_000_000
    frame = outcomes_frame([outcome, make_outcome("e1", "", "purchase")])
    assert frame["occurred_at"].to_list() == frame["received_at"].to_list()[:1] + [frame["occurred_at"][1]]
    assert frame["occurred_at"][0] == datetime.fromtimestamp(BASE_US // 1_000_000, tz=timezone.utc)


def _join(outcomes: list[OutcomeEvent], rewards: object = CLICK_PURCHASE) -> tuple[pl.DataFrame, JoinStats]:
    decisions = decisions_frame([
        make_decision("e1", items=("a", "b", "c")),
        make_decision("e2", items=("a", "z"), served_at_us=BASE_US + 60_000_000, surface="search"),
    ])  # fmt: skip
    stats = JoinStats()
    joined = join_rewards(decisions, outcomes_frame(outcomes), rewards, stats=stats)  # type: ignore[arg-type]
    assert joined.select("event_id", "item_id").rows() == decisions.select("event_id", "item_id").rows()
    return joined, stats


def _column(joined: pl.DataFrame, event_id: str, name: str) -> dict[str, object]:
    rows = joined.filter(pl.col("event_id") == event_id)
    return dict(zip(rows["item_id"].to_list(), rows[name].to_list(), strict=True))


def test_window_is_inclusive_at_both_ends_at_microsecond_resolution() -> None:
    joined, stats = _join([
        make_outcome("e1", "a", "click", occurred_at_us=BASE_US),  # at served_at: counts
        make_outcome("e1", "b", "click", occurred_at_us=BASE_US + WINDOW_US),  # at the window's end: counts
        make_outcome("e1", "c", "click", occurred_at_us=BASE_US + WINDOW_US + 1),  # 1 µs late: does not
        make_outcome("e1", "c", "click", occurred_at_us=BASE_US - 1),  # before the decision: does not
    ])  # fmt: skip
    assert _column(joined, "e1", "reward") == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert _column(joined, "e1", "clicked") == {"a": True, "b": True, "c": False}
    assert stats.out_of_window_outcomes == 2 and stats.counted_outcomes == 2


def test_weights_multiple_outcomes_unknown_names_and_whole_slate_outcomes() -> None:
    wide = RewardDefinition(weights={"click": 1.0, "purchase": 5.0}, range=(0.0, 20.0))
    joined, stats = _join([
        make_outcome("e1", "a", "click"),
        make_outcome("e1", "a", "purchase", value=2.0, occurred_at_us=BASE_US + 1_000),  # 5 × 2
        make_outcome("e1", "b", "dwell_seconds", value=30.0),  # unknown to the definition: ignored
        make_outcome("e1", "b", "click", value=0.0),  # a reported non-click: counted, reward 0, not clicked
        make_outcome("e1", "", "purchase", value=1.0),  # whole slate: slate_reward only
        make_outcome("nope", "a", "click"),  # orphan
    ], wide)  # fmt: skip
    assert _column(joined, "e1", "reward") == {"a": 11.0, "b": 0.0, "c": 0.0}
    assert _column(joined, "e1", "n_outcomes") == {"a": 2, "b": 1, "c": 0}
    assert _column(joined, "e1", "clicked") == {"a": True, "b": False, "c": False}
    assert _column(joined, "e1", "slate_reward") == {"a": 5.0, "b": 5.0, "c": 5.0}
    assert _column(joined, "e1", "n_slate_outcomes") == {"a": 1, "b": 1, "c": 1}
    assert _column(joined, "e2", "slate_reward") == {"a": 0.0, "z": 0.0}
    assert joined["reward"].sum() == 11.0  # the slate outcome is not spread over positions
    assert (stats.outcomes, stats.orphan_outcomes, stats.unknown_outcomes) == (6, 1, 1)
    assert (stats.counted_outcomes, stats.slate_outcomes) == (3, 1)


def test_each_surface_uses_its_own_definition_and_window() -> None:
    search = RewardDefinition(weights={"purchase": 2.0}, attribution_window_seconds=120.0, range=(0.0, 10.0))
    late_us = BASE_US + 60_000_000 + 100_000_000  # 100 s after e2: inside search's window only
    outcomes = [
        make_outcome("e1", "a", "click", occurred_at_us=BASE_US + 100_000_000),
        make_outcome("e2", "a", "purchase", value=3.0, occurred_at_us=late_us),
        make_outcome("e2", "z", "click", occurred_at_us=late_us),  # click is unknown to search
    ]
    joined, stats = _join(outcomes, {"default": CLICK_PURCHASE, "search": search})
    assert _column(joined, "e1", "reward") == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert _column(joined, "e2", "reward") == {"a": 6.0, "z": 0.0}
    assert _column(joined, "e2", "clicked") == {"a": False, "z": True}
    assert stats.unknown_outcomes == 1 and stats.out_of_window_outcomes == 1

    with pytest.raises(ValueError, match="rewards: no reward definition for surface.*'search'"):
        _join(outcomes, {"default": CLICK_PURCHASE})


def test_missing_columns_are_named() -> None:
    decisions = decisions_frame([make_decision("e1")])
    outcomes = outcomes_frame([make_outcome("e1", "a", "click")])
    with pytest.raises(ValueError, match="decisions_df: missing column.*'served_at'"):
        join_rewards(decisions.drop("served_at"), outcomes, CLICK_PURCHASE)
    with pytest.raises(ValueError, match="outcomes_df: missing column.*'value'"):
        join_rewards(decisions, outcomes.drop("value"), CLICK_PURCHASE)


def _write_logs(log_dir: Path, n: int) -> None:
    with LogWriter(log_dir, rotate_bytes=16 << 10) as writer:
        for i in range(n):
            served = BASE_US + i * 1_000_000
            writer.submit(decision_record(f"e{i}", served_at_us=served))
            if i % 3 == 0:
                writer.submit(outcome_record(f"e{i}", "b", "click", occurred_at_us=served + 2_000_000))
            if i % 5 == 0:
                writer.submit(outcome_record(f"e{i}", "", "purchase", occurred_at_us=served + 1_000_000))


def test_chunked_read_matches_the_in_memory_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_logs(tmp_path / "logs", 300)
    monkeypatch.setattr(tables_module, "_CHUNK_DECISIONS", 7)  # force many chunks and a concat
    tables = read_tables(tmp_path / "logs")
    everything = read_log(tmp_path / "logs")
    assert tables.decisions.equals(decisions_frame(everything.decisions))
    assert tables.outcomes.equals(outcomes_frame(everything.outcomes))
    assert tables.stats.records == 300 + 100 + 60 and tables.stats.segments > 1


def test_export_parquet_round_trip(tmp_path: Path) -> None:
    _write_logs(tmp_path / "logs", 120)
    out = tmp_path / "out" / "feedback.parquet"
    stats = export_parquet(tmp_path, out, {"default": CLICK_PURCHASE})

    back = pl.read_parquet(out)
    assert back.height == stats.rows == 120 * 3 and stats.decisions == 120 and stats.outcomes == 40 + 24
    assert back.schema["served_at"] == pl.Datetime("us", "UTC")
    tables = load_tables(tmp_path)
    assert back.equals(join_rewards(tables.decisions, tables.outcomes, CLICK_PURCHASE))
    clicked = back.filter(pl.col("item_id") == "b").group_by("clicked").len().sort("clicked")
    assert clicked.rows() == [(False, 80), (True, 40)]
    assert back["slate_reward"].sum() == 24 * 3 * 5.0
    assert stats.join.counted_outcomes == 40 and stats.read.torn_tail_records == 0
    assert not list(out.parent.glob(".*partial"))


def test_load_tables_without_logs_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="logs does not exist"):
        load_tables(tmp_path)


def test_repeats_of_an_outcome_id_in_the_log_count_once_and_repeats_without_one_by_max_or_sum() -> None:
    dwell = RewardDefinition(weights={"click": 1.0, "dwell_seconds": 0.01, "purchase": 5.0},
                             aggregation={"dwell_seconds": "sum"}, range=(0.0, 6.0))
    joined, stats = _join([
        # Two replicas logged the same retry (or a log written before ids were deduplicated online).
        make_outcome("e1", "a", "dwell_seconds", value=40.0, outcome_id="d1"),
        make_outcome("e1", "a", "dwell_seconds", value=40.0, outcome_id="d1"),
        make_outcome("e1", "a", "dwell_seconds", value=10.0, outcome_id="d2"),
        make_outcome("e1", "a", "dwell_seconds", value=5.0),  # no id: summed
        make_outcome("e1", "b", "click"), make_outcome("e1", "b", "click"), make_outcome("e1", "b", "click"),
        # The first of a key wins even when it does not count itself (out of the window), as online.
        make_outcome("e1", "c", "purchase", occurred_at_us=BASE_US + WINDOW_US + 1, outcome_id="p"),
        make_outcome("e1", "c", "purchase", outcome_id="p"),
        make_outcome("e1", "c", "click"), make_outcome("e1", "c", "purchase", value=1.0),  # 1 + 5: fits exactly
        make_outcome("e1", "", "purchase", value=1.0), make_outcome("e1", "", "click"),  # slate: 6
    ], {"default": dwell, "search": dwell})  # fmt: skip
    assert _column(joined, "e1", "reward") == pytest.approx({"a": 0.55, "b": 1.0, "c": 6.0})
    assert _column(joined, "e1", "n_outcomes") == {"a": 3, "b": 3, "c": 2}
    assert _column(joined, "e1", "slate_reward") == {"a": 6.0, "b": 6.0, "c": 6.0}
    assert (stats.outcomes, stats.duplicate_outcomes, stats.out_of_window_outcomes) == (13, 2, 1)
    assert set(joined["reward_min"]) == {0.0} and set(joined["reward_max"]) == {6.0}


def test_aggregated_rewards_are_clipped_to_the_range_and_counted() -> None:
    narrow = RewardDefinition(weights={"click": 1.0, "purchase": 1.0})  # derived range [0, 2]
    joined, stats = _join([
        make_outcome("e1", "a", "click"), make_outcome("e1", "a", "purchase", value=2.0),  # 3: clipped to 2
        make_outcome("e1", "b", "purchase", value=-1.0),  # -1: clipped to 0
    ], narrow)  # fmt: skip
    assert _column(joined, "e1", "reward") == {"a": 2.0, "b": 0.0, "c": 0.0}
    assert stats.clipped_rewards == 2


def test_outcomes_without_an_outcome_id_column_are_never_duplicates() -> None:
    decisions = decisions_frame([make_decision("e1")])
    outcomes = outcomes_frame([make_outcome("e1", "a", "click", outcome_id="k")] * 2).drop("outcome_id")
    stats = JoinStats()
    joined = join_rewards(decisions, outcomes, CLICK_PURCHASE, stats=stats)
    assert joined["n_outcomes"].to_list() == [2, 0, 0] and stats.duplicate_outcomes == 0
