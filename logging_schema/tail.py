"""Follows a live log directory: each ``poll()`` returns the complete records written since the last one.

The online learner runs in its own process and reads what the server writes, so learning never holds the
serving process's GIL. A frame that is not complete yet (the writer is mid-write) is left for the next poll; once
a newer segment exists the writer has moved on, so an incomplete tail of an older segment is torn for good and
is counted, as the reader does. A checksum mismatch skips the rest of that segment (resynchronising at the next).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

from logging_schema.segments import FRAME_HEADER, FRAME_HEADER_BYTES, HEADER_BYTES, check_header, list_segments
from recsys_rl.logging.v1.events_pb2 import LogRecord


@dataclass
class TailStats:
    records: int = 0
    torn_tail_records: int = 0
    corrupt_records: int = 0
    segments_done: int = 0


@dataclass
class LogTailer:
    """Incremental reader of ``log_dir``. ``from_end=True`` starts after what is already there;
    ``skip_written_before`` (a time.time()) skips segments last modified before it (a resumed reader)."""

    log_dir: Path
    from_end: bool = False
    skip_written_before: float | None = None
    stats: TailStats = field(default_factory=TailStats)
    _offsets: dict[Path, int] = field(default_factory=dict)
    _done: set[Path] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.log_dir = Path(self.log_dir)
        if self.from_end and self.log_dir.is_dir():
            # Older segments are finished; the newest may still grow, so we continue from its current end.
            segments = list_segments(self.log_dir)
            self._done.update(segments[:-1])
            if segments and (size := segments[-1].stat().st_size) >= HEADER_BYTES:
                self._offsets[segments[-1]] = size
        elif self.skip_written_before is not None and self.log_dir.is_dir():
            # The newest segment is never skipped: the writer may still append to it.
            self._done.update(p for p in list_segments(self.log_dir)[:-1]
                              if p.stat().st_mtime < self.skip_written_before)

    def poll(self, max_records: int = 100_000) -> list[LogRecord]:
        if not self.log_dir.is_dir():
            return []
        out: list[LogRecord] = []
        segments = [p for p in list_segments(self.log_dir) if p not in self._done]
        for i, path in enumerate(segments):
            newer_exists = i + 1 < len(segments)
            finished = self._read_segment(path, out, max_records - len(out), final=newer_exists)
            if finished and newer_exists:
                self._done.add(path)
                self._offsets.pop(path, None)
                self.stats.segments_done += 1
            if len(out) >= max_records:
                break
        self.stats.records += len(out)
        return out

    def _read_segment(self, path: Path, out: list[LogRecord], budget: int, *, final: bool) -> bool:
        """Appends complete records from ``path``; True when nothing more will come from it."""
        offset = self._offsets.get(path, 0)
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        view = memoryview(data)
        position = 0
        if offset == 0:
            if not check_header(path, view):  # header not fully written yet (or torn for good)
                return final
            position = HEADER_BYTES
        while budget > 0:
            if len(view) - position < FRAME_HEADER_BYTES:
                break
            length, crc = FRAME_HEADER.unpack_from(view, position)
            end = position + FRAME_HEADER_BYTES + length
            if end > len(view):
                break
            payload = view[position + FRAME_HEADER_BYTES:end]
            if zlib.crc32(payload) != crc:
                self.stats.corrupt_records += 1
                self._offsets[path] = offset + len(view)
                return True
            record = LogRecord()
            record.ParseFromString(payload)
            out.append(record)
            budget -= 1
            position = end
        self._offsets[path] = offset + position
        if final and budget > 0 and position < len(view):
            self.stats.torn_tail_records += 1
        return final and budget > 0
