"""Replay counts the decisions a log gap says were served unlogged (they cannot be replayed), and reads on."""

from __future__ import annotations

from pathlib import Path

from evaluators.replay.run import ReplayStats, replay
from logging_schema.writer import LogWriter
from recsys_rl.logging.v1.events_pb2 import LogGap, LogRecord
from recsys_rl.sim import SimConfig, World
from tests.evaluators.replay.test_replay import serve, surface_config


def test_replay_counts_unlogged_decisions_of_its_surface(tmp_path: Path) -> None:
    config = surface_config()
    serve(tmp_path, World(SimConfig(), seed=3), 30, config=config, prefix="g")
    gap = LogGap(decisions_unlogged=9, outcomes_refused=1, reason="ENOSPC: No space left on device")
    gap.decisions_unlogged_by_surface.update({"default": 7, "other": 2})
    with LogWriter(tmp_path / "logs") as writer:  # as the server writes it once the disk takes records again
        writer.submit(LogRecord(gap=gap))
    stats = ReplayStats()
    replay(tmp_path, "current", config=config, progress=False, stats=stats)
    assert stats.decisions == 30 and stats.other_surfaces == 0  # the gap is not mistaken for a decision
    assert (stats.unlogged_decisions, stats.gaps) == (7, 1)
    assert stats.read.gaps == 1 and stats.read.corrupt_records == 0
