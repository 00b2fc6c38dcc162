"""Columnar what-if companions: per closed segment, the columns a ``logged@cap=X`` replay reads, as packed arrays.

The row companion (:mod:`logging_schema.companions`, ``events-N.whatif``) made reading a what-if's records ~100×
faster than re-scoring, but replay still spent ~6 µs of Python per decision turning each record into column values.
This companion holds those values already in columns, so a replay reads a segment with a handful of bulk reads and
computes it with numpy (:mod:`evaluators.replay.columnar`)::

    events-000000000042.seg      the segment, unchanged
    events-000000000042.whatif   its row companion, unchanged (old logs, and the decisions the columns cannot serve)
    events-000000000042.whatcol  its columnar companion: magic b"RSRLWCOL" and version, then frames (length, CRC32,
                                 payload) as segments and companions have them:
        0  CompanionSeal: the segment's name and size and its record count, as in the row companion
        1  decisions, one row each (an Arrow IPC stream, via polars): record (its index in the segment), event_id, user_id,
           surface, policy_version, baseline_version, shield_version, serving_mode, has_served_at, seconds, nanos,
           algorithm, epsilon, temperature, gamma, cap (the logged exploration), long_term_weight, outside_share,
           n_candidates, n_scores, n_slots
        2  slots, one row each in decision order (Arrow IPC stream): item_id, position, propensity, candidate_index
        3  the decisions' candidate scores, concatenated: little-endian float64, ``n_scores`` per decision
        4  every other record (outcomes, gaps), whole (Arrow IPC stream): record, payload (the serialized LogRecord)

Written and trusted as the row companion is: the writer gathers a closed segment's values while it writes the
segment (one tuple a record, ~5 µs of attribute reads) and packs them once, when it seals the segment (temporary
name, fsync, rename). A reader uses it only when it is complete and consistent - magic and version ours, every frame
intact, the seal naming this segment at its current size, and the frames' row counts adding up to the seal's records
- and otherwise reads that segment as before (row companion, else the segment itself). Readers that predate it list
neither companion; ``remove_segment`` deletes it with its segment.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from google.protobuf.message import DecodeError

from logging_schema.segments import FRAME_HEADER, FRAME_HEADER_BYTES
from logging_schema.views import ReplayRecord
from recsys_rl.logging.v1.events_pb2 import CompanionSeal, LongTermState

SUFFIX = ".whatcol"
MAGIC = b"RSRLWCOL"
FORMAT_VERSION = 1
FILE_HEADER = struct.Struct("<8sI")
TMP_PREFIX = ".tmp-"
_MAX_FRAME_BYTES = 1 << 31

_DECISION_SCHEMA: dict[str, pl.DataType] = {
    "record": pl.Int32(), "event_id": pl.String(), "user_id": pl.String(), "surface": pl.String(),
    "policy_version": pl.String(), "baseline_version": pl.String(), "shield_version": pl.String(),
    "serving_mode": pl.Int32(), "has_served_at": pl.Boolean(), "seconds": pl.Int64(), "nanos": pl.Int32(),
    "algorithm": pl.String(), "epsilon": pl.Float64(), "temperature": pl.Float64(), "gamma": pl.Float64(),
    "cap": pl.Float64(), "long_term_weight": pl.Float64(), "outside_share": pl.Float64(),
    "n_candidates": pl.Int32(), "n_scores": pl.Int32(), "n_slots": pl.Int32(),
}  # fmt: skip
_SLOT_SCHEMA: dict[str, pl.DataType] = {"item_id": pl.String(), "position": pl.Int32(), "propensity": pl.Float64(),
                                        "candidate_index": pl.Int32()}
_OTHER_SCHEMA: dict[str, pl.DataType] = {"record": pl.Int32(), "payload": pl.Binary()}
_PER_DECISION = tuple(_DECISION_SCHEMA)[1:-3]  # the row tuple's leading values, in this order (record comes from add)

# One record's values (``row_of``): ("d", per-decision values, scores bytes, [(item id, position, propensity, candidate
# index) per slot]) for a decision, ("o", payload) for any other record.
Row = tuple


def columnar_path(segment: Path) -> Path:
    """``events-N.whatcol`` beside ``events-N.seg``."""
    return Path(segment).with_suffix(SUFFIX)


def row_of(record: bytes, n_candidates: int) -> Row:
    """One record's columnar values from ``record``, the record as its row companion keeps it (for a decision: no
    context and candidates; parsed again through the replay view, ~1.5 kB, so the scores come as their packed bytes
    instead of 100 Python floats)."""
    message = ReplayRecord.FromString(record)
    if message.WhichOneof("event") != "decision":
        return ("o", record)
    d = message.decision  # type: ignore[attr-defined]
    at, x, long_term = d.served_at, d.exploration, d.long_term
    slots = [(s.item_id, s.position, s.propensity, s.candidate_index) for s in d.slate]
    scores = d.candidate_scores
    return ("d", (d.event_id, d.user_id, d.surface, d.policy_version, d.baseline_version, d.shield_version,
                  d.serving_mode, d.HasField("served_at"), at.seconds, at.nanos, x.algorithm, x.epsilon, x.temperature,
                  x.gamma, x.cap, LongTermState.FromString(long_term).weight if long_term else 0.0,
                  d.retrieval.outside_share, n_candidates, len(scores) // 8, len(slots)), scores, slots)


class ColumnBuilder:
    """The open segment's columns, a record at a time (``add``), packed once when it is sealed (``pack``)."""

    def __init__(self) -> None:
        self.records = 0
        self._decisions: list[tuple] = []
        self._decision_records: list[int] = []
        self._scores: list[bytes] = []
        self._slots: list[tuple[str, int, float, int]] = []
        self._others: list[tuple[int, bytes]] = []

    def add(self, row: Row) -> None:
        if row[0] == "d":
            self._decision_records.append(self.records)
            self._decisions.append(row[1])
            self._scores.append(row[2])
            self._slots += row[3]
        else:
            self._others.append((self.records, row[1]))
        self.records += 1

    def pack(self, segment: Path, segment_bytes: int) -> list[bytes]:
        """The companion's frames' payloads (module docstring), in order."""
        columns = list(zip(*self._decisions)) if self._decisions else [[] for _ in _PER_DECISION + ("", "", "")]
        decisions = pl.DataFrame([self._decision_records, *columns], schema=_DECISION_SCHEMA, orient="col")
        slot_columns = list(zip(*self._slots)) if self._slots else [[] for _ in _SLOT_SCHEMA]
        slots = pl.DataFrame(slot_columns, schema=_SLOT_SCHEMA, orient="col")
        others = pl.DataFrame([[r for r, _ in self._others], [p for _, p in self._others]], schema=_OTHER_SCHEMA,
                              orient="col")
        seal = CompanionSeal(segment=Path(segment).name, segment_bytes=segment_bytes, records=self.records)
        return [seal.SerializeToString(), _ipc(decisions), _ipc(slots), b"".join(self._scores), _ipc(others)]


def _ipc(frame: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.write_ipc_stream(out, compression="uncompressed")
    return out.getvalue()


def write_columnar(segment: Path, frames: list[bytes], write: Callable[[int, bytes | memoryview], int],
                   fsync: Callable[[int], None]) -> int:
    """Write ``segment``'s columnar companion (``ColumnBuilder.pack``'s frames) under a temporary name, fsync it and
    rename it; returns its size. Raises OSError, leaving none behind."""
    final = columnar_path(segment)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    parts = [FILE_HEADER.pack(MAGIC, FORMAT_VERSION)]
    for payload in frames:
        parts += (FRAME_HEADER.pack(len(payload), zlib.crc32(payload)), payload)
    data = memoryview(b"".join(parts))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        done = 0
        while done < len(data):
            done += write(fd, data[done:])
        fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, final)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


@dataclass
class SegmentColumns:
    """A segment's columnar companion, read and checked (``read_columnar``)."""

    segment: Path
    records: int
    bytes: int  # the companion's size
    decisions: pl.DataFrame
    slots: pl.DataFrame
    scores: np.ndarray  # float64, the decisions' ``n_scores`` each, concatenated
    others: pl.DataFrame


def read_columnar(segment: Path) -> SegmentColumns | None:
    """``segment``'s columnar companion when it is complete and consistent (module docstring), else None."""
    try:
        data = memoryview(columnar_path(segment).read_bytes())
        size = Path(segment).stat().st_size
    except OSError:
        return None
    if len(data) < FILE_HEADER.size or FILE_HEADER.unpack_from(data) != (MAGIC, FORMAT_VERSION):
        return None
    payloads: list[memoryview] = []
    offset, end = FILE_HEADER.size, len(data)
    while offset < end:
        if end - offset < FRAME_HEADER_BYTES:
            return None
        length, checksum = FRAME_HEADER.unpack_from(data, offset)
        start = offset + FRAME_HEADER_BYTES
        offset = start + length
        if length > _MAX_FRAME_BYTES or offset > end or zlib.crc32(data[start:offset]) != checksum:
            return None
        payloads.append(data[start:offset])
    if len(payloads) != 5:
        return None
    try:
        seal = CompanionSeal.FromString(payloads[0])
        decisions, slots, others = (pl.read_ipc_stream(io.BytesIO(payloads[i])) for i in (1, 2, 4))
    except (DecodeError, OSError, ValueError, pl.exceptions.PolarsError):
        return None
    if (seal.segment != Path(segment).name or seal.segment_bytes != size
            or dict(decisions.schema) != _DECISION_SCHEMA or dict(slots.schema) != _SLOT_SCHEMA
            or dict(others.schema) != _OTHER_SCHEMA or decisions.height + others.height != seal.records
            or len(payloads[3]) % 8):
        return None
    scores = np.frombuffer(payloads[3], dtype="<f8").astype(np.float64, copy=False)
    if (slots.height != int(decisions["n_slots"].sum() or 0)
            or scores.size != int(decisions["n_scores"].sum() or 0)):
        return None
    return SegmentColumns(Path(segment), seal.records, len(data), decisions, slots, scores, others)


__all__ = ["ColumnBuilder", "FORMAT_VERSION", "MAGIC", "SUFFIX", "SegmentColumns", "columnar_path", "read_columnar",
           "row_of", "write_columnar"]
