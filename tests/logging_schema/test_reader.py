"""Round trips through real segment files, and what the reader does with torn, corrupt and foreign files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from logging_schema.reader import ReadStats, iter_record_batches, iter_records, read_log
from logging_schema.segments import (
    FRAME_HEADER_BYTES,
    HEADER_BYTES,
    SegmentFormatError,
    file_header,
    frame,
    list_segments,
    segment_name,
)
from logging_schema.writer import LogWriter
from recsys_rl.logging.v1.events_pb2 import LogRecord
from tests.logging_schema.builders import BASE_US, decision_record, outcome_record


def _records(n: int) -> list[LogRecord]:
    """Alternating decisions and outcomes with distinct ids, so order and content are both checkable."""
    return [
        decision_record(f"e{i}", served_at_us=BASE_US + i, n_candidates=5 + i % 7)
        if i % 2 == 0
        else outcome_record(f"e{i - 1}", "a", "click", occurred_at_us=BASE_US + i)
        for i in range(n)
    ]


def _write(log_dir: Path, records: list[LogRecord], **options: object) -> None:
    with LogWriter(log_dir, **options) as writer:  # type: ignore[arg-type]
        for record in records:
            writer.submit(record)


def _write_segment(path: Path, records: list[LogRecord]) -> list[int]:
    """A segment written by hand; returns the end offset of each record (for cutting it)."""
    data = bytearray(file_header())
    ends = []
    for record in records:
        data += frame(record.SerializeToString())
        ends.append(len(data))
    path.write_bytes(bytes(data))
    return ends


def test_round_trip_across_size_rotation_keeps_order_and_content(tmp_path: Path) -> None:
    records = _records(3_000)
    _write(tmp_path, records, rotate_bytes=32 << 10)

    segments = list_segments(tmp_path)
    assert len(segments) > 5, "expected size rotation to produce several segments"
    assert [p.name for p in segments] == [segment_name(i) for i in range(len(segments))]
    assert all(p.stat().st_size <= 32 << 10 for p in segments)

    stats = ReadStats()
    back = list(iter_records(tmp_path, stats=stats))
    assert back == records
    assert stats.records == 3_000 and stats.segments == len(segments)
    assert stats.torn_tail_records == 0 and stats.corrupt_records == 0
    assert stats.bytes == sum(p.stat().st_size for p in segments)

    result = read_log(tmp_path)
    assert [d.event_id for d in result.decisions] == [f"e{i}" for i in range(0, 3_000, 2)]
    assert len(result.outcomes) == 1_500


def test_record_larger_than_rotate_bytes_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    big = decision_record("big", n_candidates=200)
    assert big.ByteSize() > 4096
    _write(tmp_path, [decision_record("small1"), big, decision_record("small2")], rotate_bytes=4096)
    per_segment = [[r.decision.event_id for r in iter_records(p)] for p in list_segments(tmp_path)]
    assert per_segment == [["small1"], ["big"], ["small2"]]


def test_restarted_writer_starts_a_new_segment_after_a_torn_one(tmp_path: Path) -> None:
    _write(tmp_path, _records(10))
    first = list_segments(tmp_path)[0]
    first.write_bytes(first.read_bytes()[:-7])  # crash mid-record
    _write(tmp_path, [decision_record("after-restart")])

    stats = ReadStats()
    ids = [r.decision.event_id for r in iter_records(tmp_path, stats=stats) if r.HasField("decision")]
    assert ids[-1] == "after-restart"
    assert [p.name for p in list_segments(tmp_path)] == [segment_name(0), segment_name(1)]
    assert stats.records == 10 and stats.torn_tail_records == 1


@pytest.mark.parametrize(
    "cut_back",
    [pytest.param(7, id="mid-payload"), pytest.param(None, id="mid-frame-header")],
)
def test_truncated_segment_reads_back_to_its_last_whole_record(tmp_path: Path, cut_back: int | None) -> None:
    records = _records(20)
    path = tmp_path / segment_name(0)
    ends = _write_segment(path, records)
    # Cut either inside the last payload, or 3 bytes into the last record's 8-byte frame header.
    cut = ends[-1] - cut_back if cut_back is not None else ends[-2] + 3
    path.write_bytes(path.read_bytes()[:cut])

    stats = ReadStats()
    assert list(iter_records(tmp_path, stats=stats)) == records[:-1]
    assert stats.torn_tail_records == 1 and stats.corrupt_records == 0 and stats.records == 19


def test_segment_cut_inside_its_file_header_is_a_torn_tail_not_a_foreign_file(tmp_path: Path) -> None:
    _write_segment(tmp_path / segment_name(0), _records(4))
    (tmp_path / segment_name(1)).write_bytes(file_header()[:5])
    (tmp_path / segment_name(2)).write_bytes(b"")  # created, nothing written: nothing lost

    stats = ReadStats()
    assert len(list(iter_records(tmp_path, stats=stats))) == 4
    assert stats.torn_tail_records == 1 and stats.segments == 3


def test_flipped_byte_is_counted_corrupt_and_reading_resumes_at_the_next_segment(tmp_path: Path) -> None:
    first, second = _records(10), _records(6)
    ends = _write_segment(tmp_path / segment_name(0), first)
    _write_segment(tmp_path / segment_name(1), second)
    data = bytearray((tmp_path / segment_name(0)).read_bytes())
    data[ends[3] + FRAME_HEADER_BYTES + 2] ^= 0xFF  # inside the payload of record 4
    (tmp_path / segment_name(0)).write_bytes(bytes(data))

    stats = ReadStats()
    assert list(iter_records(tmp_path, stats=stats)) == first[:4] + second
    assert stats.corrupt_records == 1 and stats.torn_tail_records == 0
    assert stats.skipped_bytes == ends[-1] - ends[4]  # records 5..9 abandoned


def test_implausible_length_is_corrupt_not_torn(tmp_path: Path) -> None:
    records = _records(5)
    ends = _write_segment(tmp_path / segment_name(0), records)
    data = bytearray((tmp_path / segment_name(0)).read_bytes())
    data[ends[1] + 3] = 0x7F  # high byte of record 2's length: ~2 GiB
    (tmp_path / segment_name(0)).write_bytes(bytes(data))

    stats = ReadStats()
    assert list(iter_records(tmp_path, stats=stats)) == records[:2]
    assert stats.corrupt_records == 1 and stats.torn_tail_records == 0


def test_checksummed_payload_that_is_not_a_log_record_is_skipped_in_place(tmp_path: Path) -> None:
    records = _records(3)
    data = bytearray(file_header())
    data += frame(records[0].SerializeToString())
    data += frame(b"\xff\xff\xff")  # valid frame, invalid protobuf
    data += frame(b"")  # valid frame, a LogRecord with no event
    data += frame(records[1].SerializeToString()) + frame(records[2].SerializeToString())
    (tmp_path / segment_name(0)).write_bytes(bytes(data))

    stats = ReadStats()
    assert list(iter_records(tmp_path, stats=stats)) == records
    assert stats.corrupt_records == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"PAR1 definitely not ours", "bad magic", id="bad-magic"),
        pytest.param(b"RSRLLOG\x00\x09\x00\x00\x00", "unsupported log segment format version 9", id="version"),
        pytest.param(b"XY", "bad magic", id="short-foreign"),
    ],
)
def test_foreign_segment_file_raises_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / segment_name(3)
    path.write_bytes(content)
    with pytest.raises(SegmentFormatError, match=message) as info:
        list(iter_records(tmp_path))
    assert str(path) in str(info.value)


def test_other_files_are_ignored_and_worker_streams_are_read(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("not a segment")
    _write(tmp_path / "worker-0", [decision_record("r0")])
    _write(tmp_path / "worker-1", [decision_record("r1")])
    assert [r.decision.event_id for r in iter_records(tmp_path)] == ["r0", "r1"]


def test_single_segment_path_and_missing_directory(tmp_path: Path) -> None:
    _write_segment(tmp_path / segment_name(0), _records(2))
    assert len(list(iter_records(tmp_path / segment_name(0)))) == 2
    with pytest.raises(FileNotFoundError, match="log_dir"):
        list(iter_records(tmp_path / "missing"))
    assert HEADER_BYTES == len(file_header())


def test_record_batches_are_one_list_per_segment(tmp_path: Path) -> None:
    records = _records(40)
    _write_segment(tmp_path / segment_name(0), records[:25])
    _write_segment(tmp_path / segment_name(1), [])
    ends = _write_segment(tmp_path / segment_name(2), records[25:])
    (tmp_path / segment_name(2)).write_bytes((tmp_path / segment_name(2)).read_bytes()[: ends[-1] - 1])
    stats = ReadStats()
    batches = list(iter_record_batches(tmp_path, stats=stats))
    assert batches == [records[:25], records[25:-1]]
    assert (stats.segments, stats.records, stats.torn_tail_records) == (3, 39, 1)


def test_segments_read_ahead_still_come_in_their_turn(tmp_path: Path) -> None:
    """The next segment is read and checksummed in a thread while one is parsed: a foreign file still raises in its
    turn, after every record before it, and a reader closed early leaves no reading thread behind."""
    records = _records(60)
    _write_segment(tmp_path / segment_name(0), records[:30])
    _write_segment(tmp_path / segment_name(1), records[30:])
    (tmp_path / segment_name(2)).write_bytes(b"PAR1 definitely not ours")
    seen = []
    with pytest.raises(SegmentFormatError, match="bad magic"):
        for record in iter_records(tmp_path):
            seen.append(record)
    assert seen == records

    reader = iter_records(tmp_path)
    assert next(reader) == records[0]
    reader.close()
    deadline = time.monotonic() + 10
    while any(thread.name.startswith("log-read") for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "the read-ahead thread outlived its reader"
        time.sleep(0.01)
