"""The table view (reading) and the wire view (writing) of LogRecord must stay wire-compatible with
recsys_rl.logging.v1 (events.proto)."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from logging_schema.views import TableRecord, WireRecord
from recsys_rl.logging.v1.events_pb2 import LogRecord
from tests.logging_schema.builders import decision_record, outcome_record

# Types that share a wire encoding with the real field's type (the view's reason to exist).
_COMPATIBLE = {
    (FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE),
    (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_ENUM),
}


def _check(view: Descriptor, real: Descriptor) -> int:
    checked = 0
    for field in view.fields:
        real_field = real.fields_by_number.get(field.number)
        assert real_field is not None, f"{view.name}.{field.name}: field {field.number} is not in {real.full_name}"
        where = f"{real.full_name}.{real_field.name}"
        assert field.name == real_field.name, where
        assert field.is_repeated == real_field.is_repeated, where
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            assert real_field.type == FieldDescriptor.TYPE_MESSAGE, where
            checked += _check(field.message_type, real_field.message_type)
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
