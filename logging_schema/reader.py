"""Reading decision/outcome logs back: records in write order, with damage skipped and counted.

Segments are read in write order (see ``segments.list_segments``). What happens on damage:

* a torn tail (a segment that ends inside a record or inside its header, e.g. after a crash) is skipped
  and counted in ``torn_tail_records``; reading goes on with the next segment. Not an error.
* a record whose CRC32 does not match is skipped and counted in ``corrupt_records``; because its length
  field cannot be trusted, the rest of that segment is abandoned (counted in ``skipped_bytes``) and
  reading resynchronises at the start of the next segment.
* a record whose checksum matches but which does not parse as a ``LogRecord``, or parses with no event
  set, is counted in ``corrupt_records`` and skipped; the framing is intact, so reading continues with the
  next record of the same segment.
* a ``LogGap`` record is not damage: it states decisions the server answered while the log could not take
  records (disk full, I/O error), which are therefore missing from the log. ``read_log(...).gaps`` lists them
  and ``ReadStats.gaps`` / ``decisions_unlogged`` count them, so every consumer can say what it did not see.
* a ``events-*.seg`` file with a bad magic or an unknown format version raises SegmentFormatError naming
  the file: that is a misplaced file, not crash damage, and silently skipping it could hide lost data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError, Message

from logging_schema.segments import SegmentFormatError, SegmentScan, list_segments, scan_segment
from recsys_rl.logging.v1.events_pb2 import DecisionEvent, LogGap, LogRecord, OutcomeEvent

__all__ = [
    "LogReadResult",
    "ReadStats",
    "SegmentFormatError",
    "gap_of",
    "iter_record_batches",
    "iter_records",
    "read_log",
]


@dataclass
class ReadStats:
    """Counts of what reading a log found.

    ``records`` counts records returned; ``bytes`` counts bytes of segment files read; ``skipped_bytes``
    counts bytes abandoned after a checksum mismatch (up to the end of that segment). ``gaps`` counts LogGap
    records and ``decisions_unlogged`` / ``outcomes_refused`` sum them: decisions served while the log could not
    take records, which are not in the log, and outcomes the server refused then (hosts retry those).
    """

    segments: int = 0
    records: int = 0
    torn_tail_records: int = 0
    corrupt_records: int = 0
    bytes: int = 0
    skipped_bytes: int = 0
    gaps: int = 0
    decisions_unlogged: int = 0
    outcomes_refused: int = 0

    def add_scan(self, scan: SegmentScan) -> None:
        self.segments += 1
        self.bytes += scan.bytes
        self.torn_tail_records += scan.torn_tail_records
        self.corrupt_records += scan.corrupt_records
        self.skipped_bytes += scan.skipped_bytes


@dataclass
class LogReadResult:
    decisions: list[DecisionEvent] = field(default_factory=list)
    outcomes: list[OutcomeEvent] = field(default_factory=list)
    stats: ReadStats = field(default_factory=ReadStats)
    gaps: list[LogGap] = field(default_factory=list)


def gap_of(record: Message) -> LogGap:
    """The LogGap of a gap record, from a LogRecord or a table view (which keeps the gap as raw bytes)."""
    gap = record.gap  # type: ignore[attr-defined]
    return LogGap.FromString(gap) if isinstance(gap, bytes) else gap


def _log_paths(log_dir: Path) -> list[Path]:
    """A log directory's segments in order, or the one segment file ``log_dir`` names."""
    log_dir = Path(log_dir)
    if log_dir.is_file():
        return [log_dir]
    return list_segments(log_dir)


def _iter_segment(path: Path, stats: ReadStats, record_type: type[Message]) -> Iterator[Message]:
    """The records of one segment; its counts are added to ``stats`` once it has been read."""
    scan = SegmentScan(path=path)
    parse = record_type.FromString
    for payload in scan_segment(path, scan):
        try:
            record = parse(payload)
        except DecodeError:
            stats.corrupt_records += 1
            continue
        if record.WhichOneof("event") is None:
            stats.corrupt_records += 1
            continue
        stats.records += 1
        if record.WhichOneof("event") == "gap":
            gap = gap_of(record)
            stats.gaps += 1
            stats.decisions_unlogged += gap.decisions_unlogged
            stats.outcomes_refused += gap.outcomes_refused
        yield record
    stats.add_scan(scan)


def iter_records(
    log_dir: Path, *, stats: ReadStats | None = None, record_type: type[Message] = LogRecord
) -> Iterator[LogRecord]:
    """Every intact record of the log at ``log_dir`` (a directory, or one segment file), in write order.

    Streams: one segment's bytes and one parsed record are held at a time, so a consumer that turns
    records into columns as they come never holds a large log as protobufs. Pass a ``ReadStats`` to get
    the counts (torn tails, corrupt records, ...); a segment's counts are added once it has been read.
    ``record_type`` may be a wire-compatible view of LogRecord that parses less (``tables`` uses one).
    Raises FileNotFoundError when ``log_dir`` does not exist and SegmentFormatError for a foreign file.
    """
    stats = stats if stats is not None else ReadStats()
    for path in _log_paths(log_dir):
        yield from _iter_segment(path, stats, record_type)


def iter_record_batches(
    log_dir: Path, *, stats: ReadStats | None = None, record_type: type[Message] = LogRecord
) -> Iterator[list[LogRecord]]:
    """Like ``iter_records``, one list per segment (segments without intact records yield nothing)."""
    stats = stats if stats is not None else ReadStats()
    for path in _log_paths(log_dir):
        batch = list(_iter_segment(path, stats, record_type))
        if batch:
            yield batch


def read_log(log_dir: Path) -> LogReadResult:
    """All decisions, outcomes and gap records of a log, split by kind, with the read statistics."""
    result = LogReadResult()
    for record in iter_records(log_dir, stats=result.stats):
        kind = record.WhichOneof("event")
        if kind == "decision":
            result.decisions.append(record.decision)
        elif kind == "outcome":
            result.outcomes.append(record.outcome)
        elif kind == "gap":
            result.gaps.append(record.gap)
    return result
