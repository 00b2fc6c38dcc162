"""LogWriter on real files: draining on close, back-pressure errors, fsync policy, rotation (faults: test_writer_faults)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

import logging_schema.writer as writer_module
from logging_schema.reader import ReadStats, iter_records, read_log
from logging_schema.segments import list_segments
from logging_schema.writer import LogQueueFull, LogWriter, LogWriterClosed, LogWriterError
from ranker.errors import status_for
from recsys_rl.logging.v1.events_pb2 import LogRecord
from tests.logging_schema.builders import decision_record, make_decision, outcome_record

# Upper bound for waits on the writer thread; reached only when something is broken.
WAIT_S = 10.0


def _wait_until(condition: Callable[[], bool]) -> None:
    """Poll an observable condition (not a fixed sleep); fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_close_writes_everything_submitted_from_several_threads(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, rotate_bytes=64 << 10)
    threads_n, per_thread = 4, 2_000
    start = threading.Barrier(threads_n)

    def produce(thread: int) -> None:
        start.wait()
        for i in range(per_thread):
            writer.submit(decision_record(f"t{thread}-{i}", n_candidates=3))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    writer.close()  # idempotent

    stats = writer.stats()
    assert stats.submitted == stats.written == stats.synced == threads_n * per_thread
    assert stats.segments == len(list_segments(tmp_path)) > 1
    assert stats.bytes == sum(p.stat().st_size for p in list_segments(tmp_path))
    ids = [r.decision.event_id for r in iter_records(tmp_path)]
    assert len(ids) == len(set(ids)) == threads_n * per_thread
    for t in range(threads_n):  # each producer's records stay in its submission order
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"t{t}-")]
        assert mine == list(range(per_thread))


def test_every_submit_wakes_a_sleeping_writer_without_flush(tmp_path: Path) -> None:
    """Submits racing the writer thread's sleep (alone, and from several threads with uneven pauses) are all written
    with no flush and no timed wake-up to rescue them: fsync and rotation are an hour away, so the writer sleeps
    untimed and a lost wake-up would leave a record in the queue until the poll below fails."""
    writer = LogWriter(tmp_path, fsync_interval_s=3600.0, rotate_seconds=3600.0, companions=False)
    try:
        for i in range(300):  # each one submitted around the moment the writer goes back to sleep
            writer.submit(decision_record(f"one-{i}", n_candidates=1))
            _wait_until(lambda: writer.stats().written == i + 1)
        threads_n, per_thread = 4, 500

        def produce(thread: int) -> None:
            pause = 0
            for i in range(per_thread):
                writer.submit(decision_record(f"t{thread}-{i}", n_candidates=1))
                pause = (pause * 7 + thread + 3) % 11  # 0..10: some back to back, some after the writer slept
                if pause > 5:
                    time.sleep(pause * 20e-6)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _wait_until(lambda: writer.stats().written == 300 + threads_n * per_thread)
        assert writer.stats().synced < writer.stats().written  # nothing was flushed or fsynced on the way
    finally:
        writer.close()
    assert writer.stats().synced == 300 + threads_n * per_thread


def test_submit_after_close_raises_closed(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path)
    writer.submit(decision_record("before"))
    writer.close()
    with pytest.raises(LogWriterClosed, match="closed") as info:
        writer.submit(decision_record("after"))
    assert status_for(info.value) is grpc.StatusCode.UNAVAILABLE
    assert writer.flush(timeout=1.0) is True
    assert [r.decision.event_id for r in iter_records(tmp_path)] == ["before"]


def test_full_queue_raises_instead_of_blocking_and_loses_nothing_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    entered = threading.Event()
    real_write = os.write

    def stalled_write(fd: int, data: bytes) -> int:
        entered.set()
        assert release.wait(WAIT_S), "test never released the stalled disk"
        return real_write(fd, data)

    monkeypatch.setattr(writer_module, "_write", stalled_write)
    writer = LogWriter(tmp_path, max_queue=3)
    writer.submit(decision_record("e0"))
    assert entered.wait(WAIT_S)  # the writer thread holds e0 and is stuck in the disk
    writer.submit(decision_record("e1"))
    writer.submit(decision_record("e2"))
    started = time.perf_counter()
    with pytest.raises(LogQueueFull, match="3 records") as info:
        writer.submit(decision_record("e3"))
    assert time.perf_counter() - started < 0.5
    assert status_for(info.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert writer.flush(timeout=0.05) is False  # still stalled: flush times out instead of hanging

    release.set()
    writer.close()
    assert [r.decision.event_id for r in iter_records(tmp_path)] == ["e0", "e1", "e2"]


def test_fsync_is_deferred_to_the_interval_and_forced_by_flush(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, fsync_interval_s=3_600.0)
    for i in range(50):
        writer.submit(outcome_record(f"e{i}", "a", "click"))
    _wait_until(lambda: writer.stats().written == 50)
    assert writer.stats().synced == 0  # written to the page cache, not yet fsynced
    # Written records are already readable by another reader (the page cache is shared).
    assert len(read_log(tmp_path).outcomes) == 50
    assert writer.flush(timeout=WAIT_S) is True
    assert writer.stats().synced == 50
    writer.close()


def test_short_fsync_interval_syncs_without_flush(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, fsync_interval_s=0.01)
    writer.submit(decision_record("e0"))
    _wait_until(lambda: writer.stats().synced == 1)
    writer.close()


def test_segment_rotates_by_age(tmp_path: Path) -> None:
    rotate_seconds = 0.02
    writer = LogWriter(tmp_path, rotate_seconds=rotate_seconds)
    writer.submit(decision_record("old"))
    assert writer.flush(timeout=WAIT_S)
    opened = time.monotonic()
    _wait_until(lambda: time.monotonic() - opened > 2 * rotate_seconds)
    writer.submit(decision_record("new"))
    writer.close()
    per_segment = [[r.decision.event_id for r in iter_records(p)] for p in list_segments(tmp_path)]
    assert per_segment == [["old"], ["new"]]
    assert writer.stats().segments == 2


def test_bad_records_and_options_are_rejected_by_name(tmp_path: Path) -> None:
    with LogWriter(tmp_path) as writer:
        with pytest.raises(TypeError, match="record: expected"):
            writer.submit(make_decision("e0"))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="record.event"):
            writer.submit(LogRecord())
    for option, value in [("rotate_bytes", 0), ("rotate_seconds", 0.0), ("fsync_interval_s", -1.0), ("max_queue", 0)]:
        with pytest.raises(ValueError, match=option):
            LogWriter(tmp_path / "other", **{option: value})  # type: ignore[arg-type]


def test_one_writer_per_directory(tmp_path: Path) -> None:
    with LogWriter(tmp_path):
        with pytest.raises(LogWriterError, match="already being written"):
            LogWriter(tmp_path)
    with LogWriter(tmp_path) as writer:  # the lock is released on close
        writer.submit(decision_record("e0"))
    stats = ReadStats()
    assert len(list(iter_records(tmp_path, stats=stats))) == 1
