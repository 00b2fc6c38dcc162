"""Replay on a log written by several workers equals replay on the same records written by one process
(``tests.log_streams``), with and without a ``since`` filter, from logged scores and re-scored."""

from __future__ import annotations

import polars as pl
import pytest

from evaluators.replay.run import ReplayStats, replay
from tests.log_streams import CONFIG, SplitLog, served_log, split_log


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> SplitLog:
    root = tmp_path_factory.mktemp("replay_streams")
    served_log(root / "served", 500, seed=5)
    return split_log(root / "served", root)


@pytest.mark.parametrize(("half", "logged_scores"), [(False, True), (True, True), (True, False)])
def test_replay_of_streams_equals_replay_of_the_one_stream_log(split: SplitLog, half: bool,
                                                               logged_scores: bool) -> None:
    since = split.times_us[len(split.times_us) // 2] / 1e6 if half else None
    tables, stats = {}, {}
    for name, data_dir in (("single", split.single), ("multi", split.multi)):
        stats[name] = ReplayStats()
        tables[name] = replay(data_dir, "logged@cap=0.3", config=CONFIG, progress=False, since=since,
                              stats=stats[name], logged_scores=logged_scores)
    by_slot = ["event_id", "position"]
    assert tables["multi"].sort(by_slot).equals(tables["single"].sort(by_slot))
    assert tables["multi"].equals(tables["single"])
    assert stats["multi"].join == stats["single"].join and stats["multi"].join.duplicate_outcomes > 0
    assert stats["multi"].before_since == stats["single"].before_since
    assert (stats["single"].before_since > 100) == half and stats["single"].decisions + stats["single"].before_since == 500
    assert stats["multi"].rescored == stats["single"].rescored == (0 if logged_scores else stats["single"].decisions)
    assert stats["multi"].read.torn_tail_records == 1 and stats["single"].read.torn_tail_records == 0
    assert tables["single"].get_column("event_id").n_unique() == stats["single"].decisions
    assert tables["single"].filter(pl.col("reward") > 0).height > 0
