"""Follows a live log directory: each ``poll()`` returns the complete records written since the last one.

The online learner runs in its own process and reads what the server writes, so learning never holds the
serving process's GIL. A frame that is not complete yet (the writer is mid-write) is left for the next poll; once
a newer segment exists the writer has moved on, so an incomplete tail of an older segment is torn for good and
is counted, as the reader does. A checksum mismatch skips the rest of that segment (resynchronising at the next).

Every stream of the log is followed (``segments.list_streams``: one per serving worker), including streams that
appear after the tailer started (a worker started or restarted later: read from their start, as everything in
them is new). ``from_end`` and ``skip_written_before`` apply to each stream found at construction on its own.
Each poll returns the new records of all streams merged as the reader merges them (``reader.merge_streams``: each
stream's order kept, streams interleaved by time), so a consumer sees decisions roughly in the order served.

``record_type`` is what each record is parsed into: ``LogRecord``, or a wire-compatible view that skips what its
reader does not need (the online learner reads ``logging_schema.views.TableRecord``: a decision's 100 candidates
stay bytes instead of 100 messages with feature maps).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

from logging_schema.reader import record_time_us
from logging_schema.segments import (
    FRAME_HEADER,
    FRAME_HEADER_BYTES,
    HEADER_BYTES,
    check_header,
    list_segments,
    list_streams,
)
from google.protobuf.message import Message

from recsys_rl.logging.v1.events_pb2 import LogRecord


@dataclass
class TailStats:
    records: int = 0
    torn_tail_records: int = 0
    corrupt_records: int = 0
    segments_done: int = 0
    streams: int = 0  # streams followed so far


@dataclass
class _Stream:
    """Where the tailer is in one stream; ``clock`` is the stream's latest record time (the merge key)."""

    path: Path
    offsets: dict[Path, int] = field(default_factory=dict)
    done: set[Path] = field(default_factory=set)
    clock: int = -1
    position: int = 0


@dataclass
class LogTailer:
    """Incremental reader of the log at ``log_dir`` (all its streams). ``from_end=True`` starts after what is
    already there; ``skip_written_before`` (a time.time()) skips segments last modified before it (a resumed
    reader); both per stream, the newest segment of a stream never skipped (its writer may still append).
    ``record_type``: LogRecord or a view of it (module docstring)."""

    log_dir: Path
    from_end: bool = False
    skip_written_before: float | None = None
    record_type: type[Message] = LogRecord
    stats: TailStats = field(default_factory=TailStats)
    _streams: dict[Path, _Stream] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_dir = Path(self.log_dir)
        if not self.log_dir.is_dir():
            return
        for path in list_streams(self.log_dir):
            stream = self._follow(path)
            segments = list_segments(path)
            if self.from_end:
                # Older segments are finished; the newest may still grow, so we continue from its current end.
                stream.done.update(segments[:-1])
                if segments and (size := segments[-1].stat().st_size) >= HEADER_BYTES:
                    stream.offsets[segments[-1]] = size
            elif self.skip_written_before is not None:
                stream.done.update(p for p in segments[:-1] if p.stat().st_mtime < self.skip_written_before)

    def _follow(self, path: Path) -> _Stream:
        stream = self._streams[path] = _Stream(path)
        self.stats.streams += 1
        return stream

    def poll(self, max_records: int = 100_000) -> list[Message]:
        """New complete records of every stream, merged by time; at most ``max_records`` in all."""
        if not self.log_dir.is_dir():
            return []
        for path in list_streams(self.log_dir):
            if path not in self._streams:  # a worker that started after us: everything in it is new
                self._follow(path)
        keyed: list[tuple[int, int, int, Message]] = []
        for rank, stream in enumerate(self._streams.values()):
            budget = max_records - len(keyed)
            if budget <= 0:
                break
            for record in self._poll_stream(stream, budget):
                at = record_time_us(record)
                if at is not None and at > stream.clock:
                    stream.clock = at
                keyed.append((stream.clock, rank, stream.position, record))
                stream.position += 1
        if len(self._streams) > 1:
            keyed.sort(key=lambda item: item[:3])  # keys are distinct: records are never compared
        self.stats.records += len(keyed)
        return [record for *_, record in keyed]

    def _poll_stream(self, stream: _Stream, budget: int) -> list[Message]:
        out: list[Message] = []
        segments = [p for p in list_segments(stream.path) if p not in stream.done]
        for i, path in enumerate(segments):
            newer_exists = i + 1 < len(segments)
            finished = self._read_segment(stream, path, out, budget - len(out), final=newer_exists)
            if finished and newer_exists:
                stream.done.add(path)
                stream.offsets.pop(path, None)
                self.stats.segments_done += 1
            if len(out) >= budget:
                break
        return out

    def _read_segment(self, stream: _Stream, path: Path, out: list[Message], budget: int, *, final: bool) -> bool:
        """Appends complete records from ``path``; True when nothing more will come from it."""
        offset = stream.offsets.get(path, 0)
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        view = memoryview(data)
        position = 0
        parse = self.record_type.FromString
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
                stream.offsets[path] = offset + len(view)
                return True
            out.append(parse(payload))
            budget -= 1
            position = end
        stream.offsets[path] = offset + position
        if final and budget > 0 and position < len(view):
            self.stats.torn_tail_records += 1
        return final and budget > 0
