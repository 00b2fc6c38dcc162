"""DecisionService while its log cannot take records (a write fault injected in the writer's ``_write`` hook).

Rank answers every valid request with the baseline (propensity 1, BASELINE_FALLBACK, reason log_unavailable) and
logs nothing for it; ReportOutcome is refused with NotReady (UNAVAILABLE) and counts nothing; once the disk takes
records again the service logs by itself and writes one LogGap record stating the episode.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import logging_schema.writer as writer_module
from logging_schema.reader import read_log
from recsys_rl.config import default_config
from recsys_rl.errors import InvalidInput, NotReady
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.log_guard import LOG_UNAVAILABLE
from recsys_rl.serving.service import DecisionService
from tests.helpers import make_request

WAIT_S = 10.0


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_rank_serves_the_baseline_unlogged_and_a_gap_is_written_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = threading.Event()

    def disk(fd: int, data: bytes) -> int:
        if failing.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    monkeypatch.setattr(writer_module, "_write", disk)
    service = DecisionService(default_config(exploration_cap=0.5), tmp_path, learner="off", watch_models=False)
    try:
        logged, _ = service.rank(make_request(request_id="before"))
        assert logged.serving_mode == pb.SERVING_MODE_LEARNED
        before, before_id = service.rank(make_request(request_id="before-2"))
        assert service.writer.flush(timeout=WAIT_S)

        failing.set()
        service.rank(make_request(request_id="queued"))  # accepted, then the write fails: held by the writer
        _wait_until(lambda: not service.writer.available)
        unlogged_ids = []
        for i in range(30):
            decision, event_id = service.rank(make_request(request_id=f"down-{i}"))
            assert decision.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK
            assert decision.fallback_reason == LOG_UNAVAILABLE
            assert decision.slate_propensity == 1.0 and all(s.propensity == 1.0 for s in decision.slots)
            assert [s.item_id for s in decision.slots] == [f"item-{k}" for k in range(5)]  # baseline order
            unlogged_ids.append(event_id)
        with pytest.raises(InvalidInput, match="slate_size"):  # invalid requests stay invalid
            service.rank(make_request(slate_size=0))
        with pytest.raises(NotReady, match="retry with the same outcome_id"):
            service.report_outcome(pb.ReportOutcomeRequest(event_id=before_id, item_id="item-0", outcome="click",
                                                           value=1.0))
        assert service.tracker("default").attributed == 0  # a refused outcome is not counted
        stats = service.log_guard.stats()
        assert stats.open_gap is not None and stats.open_gap.by_surface == {"default": 30}
        assert stats.open_gap.reason.startswith("ENOSPC")

        failing.clear()  # space returns: the service logs again by itself
        _wait_until(lambda: service.rank(make_request(request_id="probe"))[0].fallback_reason != LOG_UNAVAILABLE)
        after, _ = service.rank(make_request(request_id="after"))
        assert after.serving_mode == pb.SERVING_MODE_LEARNED
        assert service.report_outcome(pb.ReportOutcomeRequest(event_id=before_id, item_id=before.slots[0].item_id,
                                                              outcome="click", value=1.0))  # retried: accepted now
    finally:
        service.close()

    result = read_log(tmp_path / "logs")
    [gap] = result.gaps
    probes = service.log_guard.stats().decisions_unlogged - 30  # probes answered before the writer recovered
    assert gap.decisions_unlogged == 30 + probes and dict(gap.decisions_unlogged_by_surface) == {"default": 30 + probes}
    assert gap.outcomes_refused == 1 and gap.reason.startswith("ENOSPC")
    assert [o.event_id for o in result.outcomes] == [before_id]  # the retried outcome, logged once
    assert gap.first_unlogged_at.ToNanoseconds() <= gap.last_unlogged_at.ToNanoseconds()
    request_ids = [d.request_id for d in result.decisions]
    assert request_ids[:3] == ["before", "before-2", "queued"]  # the held record was written, not dropped
    assert "after" in request_ids and not any(r.startswith("down-") for r in request_ids)
    assert not set(unlogged_ids) & {d.event_id for d in result.decisions}
    assert result.stats.corrupt_records == result.stats.torn_tail_records == 0


def test_close_on_a_failing_disk_returns_in_time_and_says_what_was_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    service = DecisionService(default_config(), tmp_path, learner="off", watch_models=False)
    monkeypatch.setattr(writer_module, "_write", full_disk)
    service.rank(make_request(request_id="held"))
    _wait_until(lambda: not service.writer.available)
    service.rank(make_request(request_id="unlogged"))
    started = time.monotonic()
    service.close()
    assert time.monotonic() - started < 5.0
    messages = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("1 accepted records could not be written" in m for m in messages), messages
    assert any("1 decisions served unlogged" in m and "no gap record" in m for m in messages), messages
