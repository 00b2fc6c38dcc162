"""What-if companions: per segment, the part of each record that replay from logged scores reads.

A decision record is ~19 kB at 100 candidates, almost all of it the candidates' features and the context; a what-if
at another cap (``replay --policy logged@cap=X``, and the gate, which replays it) reads only the scores, the slate,
the propensities, the exploration parameters, ids and times (~0.8 kB). Reading and checksumming the full records
alone capped that replay at ~20× re-scoring; so the writer also keeps, for each segment, a companion file::

    events-000000000042.seg      the segment (segments.py), unchanged
    events-000000000042.whatif   its companion: the same framing (length, CRC32, payload), its own magic
                                 b"RSRLWIF\\x00" and version, then one CompanionSeal and one CompanionEntry per
                                 record of the segment, in the segment's order

A CompanionEntry is the segment's LogRecord with, for a decision, ``context`` and ``candidates`` left out (their
count kept), and the offset of the record's frame in the segment, so a decision that must be re-scored (another
model version, a shield, the reward model, outside-retrieval exploration, scores that are not finite) is read from
the segment itself. Outcomes and gap records are copied whole (they are small).

Sealed together: the writer builds the companion in memory while it writes the segment and writes it when it
closes the segment (fsynced, under a temporary name, then renamed), so a companion exists only for a closed segment
whose every record it holds. A reader uses it only when it is *complete and consistent*: its magic and version are
ours, every frame is intact (no torn tail, no CRC mismatch), its seal names this segment, the segment is still
exactly ``segment_bytes`` long and the entries number ``records``. Otherwise - the open segment, an old log written
before companions, a crash between closing the segment and renaming its companion, a damaged or truncated companion,
a segment cut or grown since - the segment is read in full, as before. A segment whose bytes were damaged after it
was sealed, its size unchanged, is not detected by the companion path: it answers with the records as written (the
full path skips the damaged record and the rest of that segment).

Writing one costs the writer thread a ``ClearField`` of the context and candidates of the decision it has just
serialized, a second ``SerializeToString`` of what is left and the entry's framing (~7 µs a decision), and one
sequential write plus an fsync per segment (docs/benchmarks.md "What-if replay": writer CPU per record). A companion that cannot be written (disk full, I/O error) is skipped and counted
(``WriterStats.companion_errors``): the segment stays the log, readers fall back to it, and the writer's own
availability is unaffected.

Nothing else reads companions: every other reader lists ``events-*.seg`` only (``segments.list_segments``).
Whoever deletes a segment deletes its companion with it (``remove_segment``); a companion without its segment is
never read.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from google.protobuf.message import DecodeError, Message

from logging_schema.columnar import SUFFIX as COLUMNAR_SUFFIX, columnar_path
from logging_schema.reader import (
    ReadStats, _iter_segment, _log_streams, _scanned, gap_of, merge_streams, record_time_us,
)
from logging_schema.segments import (
    FRAME_HEADER, FRAME_HEADER_BYTES, MAX_RECORD_BYTES, read_ahead, read_framed_file, write_framed_file,
)
from logging_schema.views import varint
from recsys_rl.logging.v1.events_pb2 import CompanionEntry, CompanionSeal

log = logging.getLogger(__name__)

SUFFIX = ".whatif"
MAGIC = b"RSRLWIF\x00"
FORMAT_VERSION = 1
FILE_HEADER = struct.Struct("<8sI")
_TMP_PREFIX = ".tmp-"



# CompanionEntry's wire tags (fields 1, 2, 3: length-delimited, varint, varint), read from the generated descriptor
# so they cannot drift from events.proto; entries are concatenated at the wire level on the writer's thread.
def _tag(field: str, wire_type: int) -> bytes:
    return varint(CompanionEntry.DESCRIPTOR.fields_by_name[field].number << 3 | wire_type)


_RECORD_TAG, _COUNT_TAG, _OFFSET_TAG = _tag("record", 2), _tag("candidate_count", 0), _tag("segment_offset", 0)


def remove_partial(log_dir: Path) -> None:
    """Delete companions a crashed writer left half-written (temporary names) in ``log_dir``; its new writer calls
    this once it holds the directory's lock, so no companion is being written there."""
    for suffix in (SUFFIX, COLUMNAR_SUFFIX):
        for path in Path(log_dir).glob(f"{_TMP_PREFIX}*{suffix}"):
            path.unlink(missing_ok=True)


def companion_path(segment: Path) -> Path:
    """``events-N.whatif`` beside ``events-N.seg``."""
    return Path(segment).with_suffix(SUFFIX)


def remove_segment(segment: Path) -> None:
    """Delete a segment and its companions (they first: neither is read without its segment anyway)."""
    columnar_path(segment).unlink(missing_ok=True)
    companion_path(segment).unlink(missing_ok=True)
    Path(segment).unlink(missing_ok=True)


def compact_record(message: Message, payload: bytes, owned: bool) -> tuple[bytes, int]:
    """(the record as a companion holds it, the decision's candidate count) for a record serialized as ``payload``.

    A decision loses its context and candidates: cleared in ``message`` itself when the writer owns it (a deferred
    record's freshly built message, already serialized), else in a copy. Other records are ``payload`` as it is.
    """
    if message.WhichOneof("event") != "decision":
        return payload, 0
    if not owned:
        copy = type(message)()
        copy.CopyFrom(message)
        message = copy
    decision = message.decision  # type: ignore[attr-defined]
    count = len(decision.candidates)
    decision.ClearField("candidates")
    decision.ClearField("context")
    return message.SerializeToString(), count


def entry_bytes(record: bytes, count: int, offset: int) -> bytes:
    """A serialized CompanionEntry (field order as the generated code writes it)."""
    return b"".join((_RECORD_TAG, varint(len(record)), record, _COUNT_TAG + varint(count) if count else b"",
                     _OFFSET_TAG, varint(offset)))


def write_companion(segment: Path, segment_bytes: int, entries: list[bytes],
                    write: Callable[[int, bytes | memoryview], int], fsync: Callable[[int], None]) -> int:
    """Write ``segment``'s companion (header, seal, ``entries`` framed); returns its size. Raises OSError, leaving
    no companion behind. ``write``/``fsync``: the writer's system calls (tests inject a full disk through them)."""
    final = companion_path(segment)
    seal = CompanionSeal(segment=Path(segment).name, segment_bytes=segment_bytes, records=len(entries))
    tmp = final.with_name(f"{_TMP_PREFIX}{final.name}")
    return write_framed_file(final, tmp, FILE_HEADER.pack(MAGIC, FORMAT_VERSION),
                             (seal.SerializeToString(), *entries), write, fsync)


def read_companion(segment: Path) -> list[memoryview] | None:
    """The entries of ``segment``'s companion when it is complete and consistent (module docstring), else None."""
    try:
        size = Path(segment).stat().st_size
    except OSError:
        return None
    payloads = read_framed_file(companion_path(segment), FILE_HEADER.pack(MAGIC, FORMAT_VERSION), MAX_RECORD_BYTES)
    if not payloads:
        return None
    try:
        seal = CompanionSeal.FromString(payloads[0])
    except DecodeError:
        return None
    if seal.segment != Path(segment).name or seal.segment_bytes != size or seal.records != len(payloads) - 1:
        return None
    return payloads[1:]


class InSegment(NamedTuple):
    """Where a companion's record stands in its segment, and the decision's candidate count (a tuple: one is made
    per record read)."""

    segment: Path
    offset: int
    candidate_count: int

    def load(self, record_type: type[Message]) -> Message | None:
        """The full record from the segment, parsed as ``record_type``; None when its frame is damaged."""
        with open(self.segment, "rb") as file:
            file.seek(self.offset)
            head = file.read(FRAME_HEADER_BYTES)
            if len(head) < FRAME_HEADER_BYTES:
                return None
            length, checksum = FRAME_HEADER.unpack(head)
            payload = file.read(length) if length <= MAX_RECORD_BYTES else b""
        if len(payload) != length or zlib.crc32(payload) != checksum:
            return None
        try:
            return record_type.FromString(payload)
        except DecodeError:
            return None


Located = tuple[Message, InSegment | None]


def _load(path: Path) -> tuple[str, object]:
    """A segment's companion entries when usable, else the segment read and checksummed (in the read-ahead thread)."""
    entries = read_companion(path)
    return ("companion", entries) if entries is not None else ("segment", _scanned(path))


def _segment_records(path: Path, loaded: tuple[str, object], stats: ReadStats, entry_type: type[Message],
                     record_type: type[Message], stream: str) -> Iterator[Located]:
    kind, data = loaded
    if kind == "segment":
        for record in _iter_segment(path, stats, record_type, stream, data):  # type: ignore[arg-type]
            yield record, None
        return
    parse = entry_type.FromString
    stats.segments += 1
    stats.companions += 1
    for payload in data:  # type: ignore[union-attr]
        stats.bytes += len(payload)
        entry = parse(payload)
        record = entry.record  # type: ignore[attr-defined]
        kind = record.WhichOneof("event")
        if kind is None:  # checksummed by the writer: a record it wrote that no reader understands
            stats.corrupt_records += 1
            stats.count_damage(stream, 1)
            continue
        stats.records += 1
        if kind == "gap":
            gap = gap_of(record)
            stats.gaps += 1
            stats.decisions_unlogged += gap.decisions_unlogged
            stats.outcomes_refused += gap.outcomes_refused
        yield record, InSegment(path, entry.segment_offset, entry.candidate_count)  # type: ignore[attr-defined]


def _stream(name: str, segments: list[Path], stats: ReadStats, entry_type: type[Message],
            record_type: type[Message]) -> Iterator[Located]:
    """One stream's records, from companions where usable; the next segment is loaded in a thread meanwhile."""
    for _, path, loaded in read_ahead(segments, _load, f"whatif-read-{name}"):
        yield from _segment_records(path, loaded, stats, entry_type, record_type, name)


def iter_segment_located(path: Path, *, stream: str, stats: ReadStats, entry_type: type[Message],
                         record_type: type[Message]) -> Iterator[Located]:
    """One segment's records as ``iter_located`` gives them: from its companion when usable, else read whole."""
    return _segment_records(path, _load(path), stats, entry_type, record_type, stream)


def _time_of(item: Located) -> int | None:
    return record_time_us(item[0])


def iter_located(log_dir: Path, *, stats: ReadStats | None = None, entry_type: type[Message],
                 record_type: type[Message]) -> Iterator[Located]:
    """(record, where it stands in its segment or None) for every record of the log, all streams as one log in the
    order ``reader.iter_records`` gives. A record read from a companion (``record_type``'s fields, a decision without
    context and candidates) comes with an InSegment; one read from its segment (parsed as ``record_type``) with
    None. ``entry_type``: a CompanionEntry view whose ``record`` is ``record_type`` (views.ReplayEntry)."""
    stats = stats if stats is not None else ReadStats()
    streams = _log_streams(log_dir)
    sources: list[Iterable[Located]] = [_stream(name, segments, stats, entry_type, record_type)
                                        for name, segments in streams]
    if sources:
        yield from merge_streams(sources, time_of=_time_of)  # type: ignore[arg-type]


__all__ = ["FORMAT_VERSION", "InSegment", "MAGIC", "SUFFIX", "companion_path", "compact_record", "entry_bytes",
           "iter_located", "iter_segment_located", "read_companion", "remove_partial", "remove_segment", "write_companion"]
