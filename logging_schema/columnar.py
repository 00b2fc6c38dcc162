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

Written and trusted as the row companion is: when the writer seals a segment, a helper thread converts the row
companion's entries (already in memory) to these columns in one pass and writes them after the row companion
(temporary name, fsync, rename) - cheaper than gathering the values record by record as they are written (both were
measured: docs/benchmarks.md "What-if replay", writer CPU per record), and off the writer's thread, where a burst of
Python held up the records queued behind it while serving threads kept the GIL busy. A reader uses it only when it is complete and
consistent - magic and version ours, every frame intact, the seal naming this segment at its current size, and the
frames' row counts adding up to the seal's records - and otherwise reads that segment as before (row companion,
else the segment itself). Readers that predate it list neither companion; ``remove_segment`` deletes it with its
segment. A writer that crashes before the rename leaves a temporary file its successor deletes (``remove_partial``).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from google.protobuf.message import DecodeError

from logging_schema.segments import FRAME_HEADER_BYTES, read_framed_file, write_framed_file
from logging_schema.views import ReplayEntry
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


def columnar_path(segment: Path) -> Path:
    """``events-N.whatcol`` beside ``events-N.seg``."""
    return Path(segment).with_suffix(SUFFIX)


def columnar_frames(entries: list[bytes], segment: Path, segment_bytes: int) -> list[bytes]:
    """The columnar companion's frames (module docstring), converted from the row companion's entries
    (``companions.entry_bytes``) when the segment is sealed: one tight pass over records already in memory, which
    costs the writer less than gathering the values record by record as they are written (docs/benchmarks.md)."""
    decisions: list[tuple] = []  # tuples of scalars only: the cyclic GC untracks them
    records: list[int] = []
    scores: list[bytes] = []
    items: list[str] = []
    positions: list[int] = []
    propensities: list[float] = []
    indices: list[int] = []
    others: list[tuple[int, bytes]] = []
    parse, weight_of = ReplayEntry.FromString, LongTermState.FromString
    for i, raw in enumerate(entries):
        entry = parse(raw)
        record = entry.record  # type: ignore[attr-defined]
        if record.WhichOneof("event") != "decision":
            others.append((i, record.SerializeToString()))
            continue
        d = record.decision
        at, x, long_term, logged = d.served_at, d.exploration, d.long_term, d.candidate_scores
        n_slots = 0
        for slot in d.slate:
            items.append(slot.item_id)
            positions.append(slot.position)
            propensities.append(slot.propensity)
            indices.append(slot.candidate_index)
            n_slots += 1
        records.append(i)
        scores.append(logged)
        decisions.append((d.event_id, d.user_id, d.surface, d.policy_version, d.baseline_version, d.shield_version,
                          d.serving_mode, d.HasField("served_at"), at.seconds, at.nanos, x.algorithm, x.epsilon,
                          x.temperature, x.gamma, x.cap, weight_of(long_term).weight if long_term else 0.0,
                          d.retrieval.outside_share, entry.candidate_count, len(logged) // 8, n_slots))
    columns = list(zip(*decisions)) if decisions else [[] for _ in range(len(_DECISION_SCHEMA) - 1)]
    seal = CompanionSeal(segment=Path(segment).name, segment_bytes=segment_bytes, records=len(entries))
    return [seal.SerializeToString(),
            _ipc(pl.DataFrame([records, *columns], schema=_DECISION_SCHEMA, orient="col")),
            _ipc(pl.DataFrame([items, positions, propensities, indices], schema=_SLOT_SCHEMA, orient="col")),
            b"".join(scores),
            _ipc(pl.DataFrame([[r for r, _ in others], [p for _, p in others]], schema=_OTHER_SCHEMA, orient="col"))]


def _ipc(frame: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.write_ipc_stream(out, compression="uncompressed")
    return out.getvalue()


def write_columnar(segment: Path, frames: list[bytes], write: Callable[[int, bytes | memoryview], int],
                   fsync: Callable[[int], None]) -> int:
    """Write ``segment``'s columnar companion (``columnar_frames``) under a temporary name, fsync it and
    rename it; returns its size. Raises OSError, leaving none behind."""
    final = columnar_path(segment)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    return write_framed_file(final, tmp, FILE_HEADER.pack(MAGIC, FORMAT_VERSION),
                             frames, write, fsync)


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
        size = Path(segment).stat().st_size
    except OSError:
        return None
    payloads = read_framed_file(columnar_path(segment), FILE_HEADER.pack(MAGIC, FORMAT_VERSION), _MAX_FRAME_BYTES)
    if payloads is None:
        return None
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
    file_bytes = FILE_HEADER.size + sum(FRAME_HEADER_BYTES + len(payload) for payload in payloads)
    return SegmentColumns(Path(segment), seal.records, file_bytes, decisions, slots, scores, others)


__all__ = ["FORMAT_VERSION", "MAGIC", "SUFFIX", "SegmentColumns", "columnar_frames", "columnar_path", "read_columnar",
           "write_columnar"]
