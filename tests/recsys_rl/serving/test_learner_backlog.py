"""A learner far behind its log (starved of CPU at a peak, ``serve --learner-nice``) holds a bounded number of
decisions whatever the backlog: it reads ``read_ahead`` records at a time and learns each read before the next;
on stop it drains for a bounded time, publishes what it learned, and writes its progress file.

Real parts: a real log written by ``LogWriter``, the ``LogTailer`` the learner process uses, real VW learners and
registry. The learner's clock is moved an hour ahead, so that every logged decision's window has closed.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

from logging_schema.segments import stream_dir
from logging_schema.tail import LogTailer
from logging_schema.views import TableRecord
from logging_schema.writer import LogWriter
from recsys_rl.config import ServiceConfig
from recsys_rl.serving.learner import build_learners, follow_log
from recsys_rl.serving.registry import ModelRegistry
from tests.recsys_rl.serving.test_learner_streams import SURFACE, _decision, _policy

BACKLOG = 600
HOUR_LATER = 3600.0


def _backlog(tmp_path: Path) -> ModelRegistry:
    """A data dir whose log holds BACKLOG decisions nobody has learned, over two workers' streams."""
    registry = ModelRegistry(tmp_path / "models")
    policy = _policy(registry)
    with LogWriter(stream_dir(tmp_path / "logs", 0)) as w0, LogWriter(stream_dir(tmp_path / "logs", 1)) as w1:
        for i in range(BACKLOG):
            (w0 if i % 2 else w1).submit(_decision(policy, f"d{i}"))
        assert w0.flush(10.0) and w1.flush(10.0)
    return registry


def _follow(tmp_path: Path, *, read_ahead: int, stop_at_start: bool = False, drain_s: float = 10.0):  # noqa: ANN202
    registry = ModelRegistry(tmp_path / "models")
    # One version, on stop (SURFACE publishes after every decision): the manifest then counts what it learned.
    surface = replace(SURFACE, model=replace(SURFACE.model, publish_every=10**6))
    learners = build_learners(ServiceConfig({"default": surface}), registry)
    learner = learners["default"]
    stop = threading.Event()
    if stop_at_start:
        stop.set()
    thread = threading.Thread(target=follow_log, args=(LogTailer(tmp_path / "logs", record_type=TableRecord),
                                                       learners, stop),
                              kwargs={"interval_s": 0.01, "read_ahead": read_ahead, "drain_s": drain_s,
                                      "clock": lambda: time.time() + HOUR_LATER,
                                      "progress": tmp_path / "run" / "learner.json"}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not stop_at_start and learner.stats.learned_decisions < BACKLOG:
        assert thread.is_alive() and time.monotonic() < deadline, learner.stats
        time.sleep(0.01)
    stop.set()
    thread.join(60)
    assert not thread.is_alive()
    return learner, registry


def test_a_learner_behind_holds_one_read_at_a_time_and_learns_everything(tmp_path: Path) -> None:
    _backlog(tmp_path)
    learner, registry = _follow(tmp_path, read_ahead=50)
    assert learner.stats.learned_decisions == BACKLOG and learner.pending == 0
    assert 0 < learner.stats.peak_pending <= 50  # not the backlog: each read is learned before the next
    latest = registry.latest("default")
    assert latest is not None and latest.manifest["data_range"]["decisions"] == BACKLOG  # published on stop
    progress = json.loads((tmp_path / "run" / "learner.json").read_text())["surfaces"]["default"]
    assert progress == {"seen": BACKLOG, "pending": 0, "learned": BACKLOG, "peak_pending": learner.stats.peak_pending}


def test_without_the_bound_the_learner_would_hold_the_whole_backlog(tmp_path: Path) -> None:
    """The same backlog read in one go (the learner read up to 100,000 records at a time): it holds all of it."""
    _backlog(tmp_path)
    learner, _ = _follow(tmp_path, read_ahead=10**6)
    assert learner.stats.learned_decisions == BACKLOG and learner.stats.peak_pending == BACKLOG


def test_stop_drains_for_a_bounded_time_then_publishes(tmp_path: Path) -> None:
    """Stopped at once with no drain time: it learns one read (not the whole backlog) and publishes it."""
    _backlog(tmp_path)
    learner, registry = _follow(tmp_path, read_ahead=50, stop_at_start=True, drain_s=0.0)
    assert learner.stats.learned_decisions == 50 and learner.stats.peak_pending == 50
    latest = registry.latest("default")
    assert latest is not None and latest.manifest["data_range"]["decisions"] == 50
