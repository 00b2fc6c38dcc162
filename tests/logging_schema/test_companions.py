"""What-if companions (logging_schema.companions) on real files: sealed with their segment, used only when complete
and consistent, skipped (never fatal) when they cannot be written, invisible to every other reader."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import logging_schema.writer as writer_module
from logging_schema.companions import (
    InSegment, companion_path, iter_located, read_companion, remove_segment,
)
from logging_schema.reader import ReadStats, iter_records
from logging_schema.segments import list_segments
from logging_schema.views import ReplayEntry, ReplayRecord, WireRecord
from logging_schema.writer import DeferredRecord, LogWriter
from recsys_rl.logging.v1.events_pb2 import LogGap, LogRecord
from tests.logging_schema.builders import decision_record, outcome_record


def _records(n: int) -> list[LogRecord]:
    """n decisions, each followed by an outcome, and one gap record in the middle."""
    out: list[LogRecord] = []
    for i in range(n):
        out.append(decision_record(f"e{i}", served_at_us=1_700_000_000_000_000 + i, n_candidates=20))
        out.append(outcome_record(f"e{i}", "a", "click"))
        if i == n // 2:
            out.append(LogRecord(gap=LogGap(decisions_unlogged=3)))
    return out


def _write(log_dir: Path, records: list[LogRecord], *, deferred: bool = True, **kwargs: object) -> LogWriter:
    writer = LogWriter(log_dir, rotate_bytes=8 << 10, **kwargs)  # type: ignore[arg-type]
    for record in records:
        if deferred:  # as serving submits them: a WireRecord built on the writer's thread, stripped in place
            payload = record.SerializeToString()
            writer.submit(DeferredRecord(lambda p=payload: WireRecord.FromString(p)))
        else:
            writer.submit(record)
    writer.close()
    return writer


def _located(log_dir: Path, stats: ReadStats | None = None) -> list[tuple[object, InSegment | None]]:
    return list(iter_located(log_dir, stats=stats, entry_type=ReplayEntry, record_type=ReplayRecord))


@pytest.mark.parametrize("deferred", [True, False])
def test_every_closed_segment_gets_a_companion_with_its_records(tmp_path: Path, deferred: bool) -> None:
    records = _records(40)
    writer = _write(tmp_path, records, deferred=deferred)
    segments = list_segments(tmp_path)
    assert len(segments) > 3 and all(companion_path(s).is_file() for s in segments)
    assert writer.stats().companions == len(segments) and writer.stats().companion_errors == 0
    stats = ReadStats()
    located = _located(tmp_path, stats)
    assert stats.companions == stats.segments == len(segments) and stats.gaps == 1
    assert stats.decisions_unlogged == 3
    full = list(iter_records(tmp_path, record_type=ReplayRecord))
    assert len(located) == len(full) == len(records)
    for (record, where), whole in zip(located, full):
        assert where is not None
        if whole.WhichOneof("event") == "decision":
            # The decision without context and candidates; the candidates' count and the full record kept.
            assert not record.decision.candidates and not record.decision.context  # type: ignore[attr-defined]
            assert where.candidate_count == len(whole.decision.candidates) == 20
            assert record.decision.slate == whole.decision.slate  # type: ignore[attr-defined]
            assert record.decision.candidate_scores == whole.decision.candidate_scores  # type: ignore[attr-defined]
            assert where.load(ReplayRecord) == whole
        else:
            assert record == whole and where.candidate_count == 0
    if not deferred:  # a record the caller still holds is not stripped
        assert all(len(r.decision.candidates) == 20 for r in records if r.WhichOneof("event") == "decision")


def test_other_readers_see_only_the_segments(tmp_path: Path) -> None:
    _write(tmp_path, _records(30))
    stats = ReadStats()
    assert len(list(iter_records(tmp_path, stats=stats))) == 61
    assert stats.corrupt_records == stats.torn_tail_records == 0 and stats.segments == len(list_segments(tmp_path))


def test_open_segment_and_writer_without_companions_are_read_whole(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "open")
    for record in _records(3):
        writer.submit(record)
    assert writer.flush(timeout=10)
    stats = ReadStats()
    assert all(where is None for _, where in _located(tmp_path / "open", stats))  # not sealed yet
    assert stats.companions == 0 and stats.records == 7
    writer.close()
    assert [where is not None for _, where in _located(tmp_path / "open")] == [True] * 7
    _write(tmp_path / "off", _records(3), companions=False)
    assert not list((tmp_path / "off").glob("*.whatif"))


def _damage_cases(segments: list[Path], companion_path: Callable[[Path], Path] = companion_path,
                  grow: bool = True) -> dict[str, Path]:
    """Each way a companion can be unusable, applied to a different segment; returns the segments damaged.
    ``companion_path``: which companion (row, or columnar: logging_schema.columnar.columnar_path); ``grow=False``
    leaves the fourth segment as it is (already grown for the other companion)."""
    missing, torn, flipped, grown, renamed, foreign = segments[:6]
    companion_path(missing).unlink()  # a crash between closing the segment and writing its companion
    data = companion_path(torn).read_bytes()
    companion_path(torn).write_bytes(data[:-5])
    data = bytearray(companion_path(flipped).read_bytes())
    data[len(data) // 2] ^= 0x40
    companion_path(flipped).write_bytes(bytes(data))
    if grow:
        with open(grown, "ab") as file:  # the segment changed since it was sealed
            file.write(b"\x01\x02")
    # Another segment's companion under this one's name: its seal names the other segment.
    companion_path(renamed).write_bytes(companion_path(segments[6]).read_bytes())
    data = bytearray(companion_path(foreign).read_bytes())
    data[:8] = b"NOTOURS\x00"
    companion_path(foreign).write_bytes(bytes(data))
    return {"missing": missing, "torn": torn, "flipped": flipped, "grown": grown, "renamed": renamed,
            "foreign": foreign}


def test_unusable_companions_fall_back_to_their_segment(tmp_path: Path) -> None:
    _write(tmp_path, _records(60))
    segments = list_segments(tmp_path)
    assert len(segments) >= 8
    reference = [r.SerializeToString() for r in iter_records(tmp_path, record_type=ReplayRecord)]
    damaged = _damage_cases(segments)
    for name, segment in damaged.items():
        assert read_companion(segment) is None, name
    partial = tmp_path / ".tmp-events-000000000099.whatif"
    partial.write_bytes(b"half")  # a companion being written (or left by a crash): ignored
    stats = ReadStats()
    located = _located(tmp_path, stats)
    assert stats.companions == len(segments) - len(damaged)
    whole = {where.segment if where else None for _, where in located}
    assert not whole & set(damaged.values())  # every damaged one was read from its segment
    # The same records in the same order; a full record where its companion was unusable.
    assert len(located) == len(reference) + 0  # the grown segment's 2 stray bytes are a torn tail, not a record
    for (record, where), expected in zip(located, reference):
        if where is None or record.WhichOneof("event") != "decision":  # type: ignore[attr-defined]
            assert record.SerializeToString() == expected  # type: ignore[attr-defined]
        else:
            assert where.load(ReplayRecord).SerializeToString() == expected  # type: ignore[union-attr]
    LogWriter(tmp_path).close()  # the next writer removes what a crashed one left half-written
    assert not partial.exists()


def test_a_damaged_record_behind_a_companion_loads_as_none(tmp_path: Path) -> None:
    _write(tmp_path, _records(4))
    (record, where), *_ = _located(tmp_path)
    assert where is not None
    data = bytearray(where.segment.read_bytes())
    data[where.offset + 20] ^= 0x01  # inside the first record's payload: its CRC no longer matches
    where.segment.write_bytes(bytes(data))
    assert where.load(ReplayRecord) is None


def test_a_companion_that_cannot_be_written_is_skipped_and_counted(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full for the companion only: the segment is written and read as always, no partial companion is left,
    and the writer stays available (a real file descriptor is checked for what it writes)."""
    real = writer_module._write

    def failing(fd: int, data: bytes | memoryview) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".whatif"):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(fd, data)

    monkeypatch.setattr(writer_module, "_write", failing)
    writer = LogWriter(tmp_path, rotate_bytes=8 << 10)
    for record in _records(30):
        writer.submit(record)
    assert writer.flush(timeout=10)
    assert writer.stats().companion_errors >= 1  # segments rotated so far
    assert writer.available and writer.stats().write_errors == 0  # the log itself never noticed
    writer.close()
    segments = list_segments(tmp_path)
    assert writer.stats().companion_errors == len(segments) and writer.stats().companions == 0
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".whatif" or p.name.startswith(".tmp-")]
    stats = ReadStats()
    assert len(_located(tmp_path, stats)) == 61 and stats.companions == 0


def test_remove_segment_removes_its_companion(tmp_path: Path) -> None:
    _write(tmp_path, _records(20))
    first = list_segments(tmp_path)[0]
    remove_segment(first)
    assert not first.exists() and not companion_path(first).exists()
    stats = ReadStats()
    _located(tmp_path, stats)
    assert stats.companions == stats.segments == len(list_segments(tmp_path))


def test_streams_merge_in_the_order_of_the_full_log(tmp_path: Path) -> None:
    """Several workers' streams: records from companions come in the merged order ``iter_records`` gives."""
    from logging_schema.segments import stream_dir

    for worker in (0, 1):
        records = [decision_record(f"w{worker}-{i}", served_at_us=1_700_000_000_000_000 + 3 * i + worker,
                                   n_candidates=20) for i in range(40)]
        _write(stream_dir(tmp_path, worker), records)
    stats = ReadStats()
    located = _located(tmp_path, stats)
    assert stats.companions == stats.segments > 4
    full = [r.decision.event_id for r in iter_records(tmp_path)]
    assert [r.decision.event_id for r, _ in located] == full  # type: ignore[attr-defined]
    assert full[:4] == ["w0-0", "w1-0", "w0-1", "w1-1"]
