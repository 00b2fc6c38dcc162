"""LogWriter under write faults injected through its ``_write``/``_fsync``/``_ftruncate`` hooks, on real files.

A full disk or an I/O error makes the writer unavailable (``submit`` raises LogUnavailable), keeps what it
holds, retries with backoff and becomes available again by itself; what it wrote reads back cleanly, in order,
exactly once. A deferred build that raises is skipped and counted; ``close`` returns within its timeout on a
disk that never recovers and says how many records it could not write.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

import logging_schema.writer as writer_module
from logging_schema.reader import ReadStats, iter_records
from logging_schema.segments import list_segments
from logging_schema.writer import DeferredRecord, LogRecordsLost, LogUnavailable, LogWriter
from ranker.errors import status_for
from tests.logging_schema.builders import decision_record

WAIT_S = 10.0  # upper bound of every poll; reached only when something is broken


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


class FlakyDisk:
    """A ``_write`` replacement: real writes, except while ``failing``; the first failing call writes half first.

    The half write is what a filling disk does (the kernel takes what fits, then ENOSPC), so the writer has to
    cut the torn record back off the segment. The first failing call also waits for ``release``, so a test can
    queue records while the writer is inside the disk.
    """

    def __init__(self, error: int = errno.ENOSPC) -> None:
        self.error = error
        self.failing = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.failures = 0
        self._half_written = False
        self._lock = threading.Lock()

    def write(self, fd: int, data: memoryview | bytes) -> int:
        if not self.failing.is_set():
            return os.write(fd, data)
        self.entered.set()
        assert self.release.wait(WAIT_S), "the test never released the disk"
        with self._lock:
            if not self._half_written and len(data) > 1:
                self._half_written = True
                return os.write(fd, data[: len(data) // 2])
            self.failures += 1
        raise OSError(self.error, os.strerror(self.error))


def _read_ids(log_dir: Path) -> tuple[list[str], ReadStats]:
    stats = ReadStats()
    return [r.decision.event_id for r in iter_records(log_dir, stats=stats)], stats


def test_a_half_written_segment_header_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FlakyDisk(errno.ENOSPC)
    monkeypatch.setattr(writer_module, "_write", disk.write)
    disk.failing.set()
    writer = LogWriter(tmp_path)
    writer.submit(decision_record("e0"))
    _wait_until(lambda: disk.failures >= 2)  # the half header, then a retry
    with pytest.raises(LogRecordsLost) as info:
        writer.close(timeout=0.5)
    assert info.value.unwritten == 1
    assert list_segments(tmp_path) == []  # no half-made segment left behind for readers


def test_full_disk_holds_records_retries_and_recovers_without_a_torn_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FlakyDisk(errno.ENOSPC)
    monkeypatch.setattr(writer_module, "_write", disk.write)
    writer = LogWriter(tmp_path, fsync_interval_s=0.0)
    writer.submit(decision_record("before"))
    assert writer.flush(timeout=WAIT_S)

    disk.release.clear()
    disk.failing.set()
    held = [f"held-{i}" for i in range(20)]
    writer.submit(decision_record(held[0], n_candidates=50))
    assert disk.entered.wait(WAIT_S)  # the writer is inside the filling disk with held-0
    for event_id in held[1:]:  # accepted while the writer still believed the disk was fine
        writer.submit(decision_record(event_id, n_candidates=50))
    disk.release.set()
    _wait_until(lambda: not writer.available)
    health = writer.health()
    assert not health.available and health.error.startswith("ENOSPC")
    assert health.since is not None and abs(health.since - time.time()) < WAIT_S
    with pytest.raises(LogUnavailable, match="ENOSPC") as info:
        writer.submit(decision_record("refused"))
    assert status_for(info.value) is grpc.StatusCode.UNAVAILABLE
    assert writer.flush(timeout=0.05) is False  # still failing: flush times out instead of hanging
    _wait_until(lambda: disk.failures >= 3)  # retried, not given up

    disk.failing.clear()  # space returns
    _wait_until(lambda: writer.available)
    writer.submit(decision_record("after"))
    writer.close()

    ids, stats = _read_ids(tmp_path)
    assert ids == ["before", *held, "after"]  # in order, exactly once, nothing refused slipped in
    assert stats.torn_tail_records == stats.corrupt_records == stats.skipped_bytes == 0
    final = writer.stats()
    assert final.written == final.synced == 22 and final.unwritten == 0 and final.write_errors >= 3


def test_retries_back_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[float] = []

    def dead_disk(fd: int, data: bytes) -> int:
        attempts.append(time.monotonic())
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer_module, "_write", dead_disk)
    writer = LogWriter(tmp_path)
    writer.submit(decision_record("e0"))
    _wait_until(lambda: len(attempts) >= 5)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)][:4]
    # 50, 100, 200, 400 ms: each wait at least the backoff (no busy loop), and growing.
    for gap, backoff in zip(gaps, (0.05, 0.1, 0.2, 0.4), strict=True):
        assert gap >= backoff * 0.9, gaps
    assert writer.health().error.startswith("EIO")
    with pytest.raises(LogRecordsLost):
        writer.close(timeout=0.5)


def test_fsync_error_is_retried_and_the_writer_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = {"left": 3}
    real_fsync = os.fsync

    def flaky_fsync(fd: int) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(writer_module, "_fsync", flaky_fsync)
    writer = LogWriter(tmp_path, fsync_interval_s=0.0)
    writer.submit(decision_record("e0"))
    _wait_until(lambda: not writer.available or failures["left"] == 0)
    assert writer.flush(timeout=WAIT_S)  # the fsync went through once the device did
    assert writer.available and failures["left"] == 0
    writer.submit(decision_record("e1"))
    writer.close()
    assert _read_ids(tmp_path)[0] == ["e0", "e1"]
    assert writer.stats().write_errors == 3


def test_failed_truncate_abandons_the_segment_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FlakyDisk(errno.ENOSPC)
    monkeypatch.setattr(writer_module, "_write", disk.write)

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer_module, "_ftruncate", no_truncate)
    writer = LogWriter(tmp_path)
    writer.submit(decision_record("e0"))
    assert writer.flush(timeout=WAIT_S)  # a segment is open and holds a record
    disk.release.clear()
    disk.failing.set()
    writer.submit(decision_record("e1"))
    assert disk.entered.wait(WAIT_S)  # the writer is inside the failing disk: the rest are accepted, not refused
    for i in range(2, 6):
        writer.submit(decision_record(f"e{i}"))
    disk.release.set()
    _wait_until(lambda: not writer.available)
    disk.failing.clear()
    _wait_until(lambda: writer.available)
    writer.close()
    ids, stats = _read_ids(tmp_path)
    assert ids == [f"e{i}" for i in range(6)]
    assert stats.torn_tail_records == 1  # the abandoned segment's torn tail, skipped like after a crash
    assert len(list_segments(tmp_path)) == 2


def test_a_build_that_raises_is_skipped_counted_and_logging_goes_on(tmp_path: Path) -> None:
    def broken() -> object:
        raise RuntimeError("candidate copy failed")

    writer = LogWriter(tmp_path)
    writer.submit(decision_record("e0"))
    writer.submit(DeferredRecord(broken))  # type: ignore[arg-type]
    writer.submit(DeferredRecord(lambda: decision_record("e1")))
    assert writer.flush(timeout=WAIT_S)  # the skipped record counts as done: flush does not wait for it
    writer.submit(decision_record("e2"))
    writer.close()
    assert _read_ids(tmp_path)[0] == ["e0", "e1", "e2"]
    stats = writer.stats()
    assert (stats.submitted, stats.written, stats.build_errors, stats.unwritten) == (4, 3, 1, 0)


def test_close_on_a_disk_that_never_recovers_returns_in_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    all_submitted = threading.Event()

    def full_disk(fd: int, data: bytes) -> int:
        # The first write fails only once all ten are accepted: otherwise a writer thread faster than this loop
        # would turn unavailable half way and refuse the rest (a race, not the contract under test).
        all_submitted.wait(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "_write", full_disk)
    writer = LogWriter(tmp_path)
    for i in range(10):
        writer.submit(decision_record(f"e{i}"))
    all_submitted.set()
    _wait_until(lambda: not writer.available)
    started = time.monotonic()
    with pytest.raises(LogRecordsLost, match="10 accepted records could not be written") as info:
        writer.close(timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert info.value.unwritten == writer.stats().unwritten == 10
    monkeypatch.setattr(writer_module, "_write", os.write)
    with LogWriter(tmp_path) as again:  # the directory lock was released
        again.submit(decision_record("next"))
    assert _read_ids(tmp_path)[0] == ["next"]
