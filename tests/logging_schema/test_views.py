"""The table view (reading) and the wire view (writing) of LogRecord must stay wire-compatible with
recsys_rl.logging.v1 (events.proto)."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

import numpy as np

from logging_schema.views import ReplayRecord, TableRecord, WireRecord
from recsys_rl.logging.v1.events_pb2 import LogRecord
from tests.logging_schema.builders import decision_record, outcome_record

# Types that share a wire encoding with the real field's type (the view's reason to exist).
_COMPATIBLE = {
    (FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE),
    (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_ENUM),
}


def _check(view: Descriptor, real: Descriptor, packed: frozenset[str] = frozenset()) -> int:
    """Fields checked; ``packed``: repeated scalars the view reads as one bytes field (their packed encoding)."""
    checked = 0
    for field in view.fields:
        real_field = real.fields_by_number.get(field.number)
        assert real_field is not None, f"{view.name}.{field.name}: field {field.number} is not in {real.full_name}"
        where = f"{real.full_name}.{real_field.name}"
        assert field.name == real_field.name, where
        if real_field.full_name in packed:
            assert field.type == FieldDescriptor.TYPE_BYTES and not field.is_repeated and real_field.is_repeated, where
            assert real_field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_INT32), where
            checked += 1
            continue
        assert field.is_repeated == real_field.is_repeated, where
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            assert real_field.type == FieldDescriptor.TYPE_MESSAGE, where
            checked += _check(field.message_type, real_field.message_type, packed)
        else:
            assert field.type == real_field.type or (field.type, real_field.type) in _COMPATIBLE, where
        checked += 1
    return checked


def test_every_view_field_matches_the_real_schema() -> None:
    assert _check(TableRecord.DESCRIPTOR, LogRecord.DESCRIPTOR) > 30


def test_view_parses_real_records_with_the_same_values() -> None:
    decision = decision_record("e1", n_candidates=7)
    view = TableRecord.FromString(decision.SerializeToString())
    assert view.WhichOneof("event") == "decision"
    assert len(view.decision.candidates) == 7
    assert [s.item_id for s in view.decision.slate] == [s.item_id for s in decision.decision.slate]
    assert view.decision.served_at.seconds == decision.decision.served_at.seconds
    assert view.decision.exploration.cap == decision.decision.exploration.cap
    outcome = outcome_record("e1", "a", "click")
    assert TableRecord.FromString(outcome.SerializeToString()).outcome.outcome == "click"


def test_the_wire_view_declares_every_field_of_the_real_schema() -> None:
    def names(descriptor: Descriptor) -> set[str]:
        return {f.name for f in descriptor.fields}

    assert _check(WireRecord.DESCRIPTOR, LogRecord.DESCRIPTOR) > 60
    decision = WireRecord.DESCRIPTOR.fields_by_name["decision"].message_type
    real = LogRecord.DESCRIPTOR.fields_by_name["decision"].message_type
    assert names(decision) == names(real)  # nothing the serving path logs can be left out
    assert {f.name for f in decision.fields if f.type == FieldDescriptor.TYPE_BYTES} == {"context", "candidates"}


def test_a_wire_record_with_serialized_candidates_parses_as_the_real_record() -> None:
    real = decision_record("e1", n_candidates=5)
    wire = WireRecord()
    event = wire.decision
    event.MergeFromString(_without(real.decision, "context", "candidates").SerializeToString())
    event.context = real.decision.context.SerializeToString()
    event.candidates.extend(c.SerializeToString() for c in real.decision.candidates)
    assert LogRecord.FromString(wire.SerializeToString()) == real


def _without(event, *fields: str):  # noqa: ANN001, ANN202 - a DecisionEvent copy
    copy = type(event)()
    copy.CopyFrom(event)
    for name in fields:
        copy.ClearField(name)
    return copy


def test_replay_view_matches_the_real_schema_and_reads_scores_as_packed_bytes() -> None:
    packed = frozenset({"recsys_rl.logging.v1.DecisionEvent.candidate_scores"})
    assert _check(ReplayRecord.DESCRIPTOR, LogRecord.DESCRIPTOR, packed) > 25
    record = decision_record("e1", n_candidates=7)
    record.decision.candidate_scores.extend([0.5, -1.25, float("inf"), 0.0, 1e-300, 3.0, -0.0])
    view = ReplayRecord.FromString(record.SerializeToString())
    scores = np.frombuffer(view.decision.candidate_scores, dtype="<f8")
    assert scores.tobytes() == np.array(record.decision.candidate_scores).tobytes()
    assert [s.candidate_index for s in view.decision.slate] == [s.candidate_index for s in record.decision.slate]
    assert len(view.decision.candidates) == 7


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def test_replay_view_reads_no_scores_from_an_unpacked_writer() -> None:
    """proto3 parsers also accept a repeated double written unpacked (one fixed64 field per value): the view's
    bytes field then sees another wire type, keeps it as unknown and reads b"" - replay re-scores that decision."""
    decision = decision_record("e1", n_candidates=2).decision
    tag = _varint(decision.DESCRIPTOR.fields_by_name["candidate_scores"].number << 3 | 1)  # wire type fixed64
    inner = decision.SerializeToString() + b"".join(tag + np.float64(x).tobytes() for x in (0.5, 2.0))
    unpacked = _varint(LogRecord.DESCRIPTOR.fields_by_name["decision"].number << 3 | 2) + _varint(len(inner)) + inner
    assert list(LogRecord.FromString(unpacked).decision.candidate_scores) == [0.5, 2.0]
    assert ReplayRecord.FromString(unpacked).decision.candidate_scores == b""
