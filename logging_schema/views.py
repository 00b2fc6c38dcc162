"""Wire-compatible "table views" of LogRecord that skip parsing what the tables do not need.

Parsing a DecisionEvent with 100 candidates costs ~60 µs in Python protobuf (upb), almost all of it in the
candidates' and context's feature maps - which the decision table never reads (it only needs the number
of candidates). ``TableRecord`` declares the same field numbers as ``recsys_rl.logging.v1.LogRecord`` but
types ``context`` and each candidate as opaque ``bytes`` (wire-compatible with an embedded message), so
upb copies them instead of building maps: ~12 µs for the same record. Fields the tables do not use are
simply not declared; protobuf keeps them as unknown fields.

The descriptor is built here, in a private pool, so it needs no .proto file, no generated code and never
collides with the real messages. ``tests/logging_schema/test_views.py`` checks every declared field
against the real descriptor, so a change to events.proto that breaks compatibility fails a test.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

_F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "recsys_rl_tableview"

# message name -> [(number, name, type, repeated, message type name)]; names and numbers as in events.proto
_MESSAGES: dict[str, list[tuple[int, str, int, bool, str | None]]] = {
    "Timestamp": [(1, "seconds", _F.TYPE_INT64, False, None), (2, "nanos", _F.TYPE_INT32, False, None)],
    "LoggedSlot": [
        (1, "item_id", _F.TYPE_STRING, False, None),
        (2, "position", _F.TYPE_INT32, False, None),
        (3, "propensity", _F.TYPE_DOUBLE, False, None),
        (4, "score", _F.TYPE_DOUBLE, False, None),
        (5, "explored", _F.TYPE_BOOL, False, None),
        (6, "candidate_index", _F.TYPE_INT32, False, None),
        (7, "exploration_mass", _F.TYPE_DOUBLE, False, None),
    ],
    "ExplorationParams": [
        (1, "algorithm", _F.TYPE_STRING, False, None),
        (2, "epsilon", _F.TYPE_DOUBLE, False, None),
        (3, "temperature", _F.TYPE_DOUBLE, False, None),
        (4, "gamma", _F.TYPE_DOUBLE, False, None),
        (5, "cap", _F.TYPE_DOUBLE, False, None),
    ],
    "DecisionEvent": [
        (1, "event_id", _F.TYPE_STRING, False, None),
        (2, "request_id", _F.TYPE_STRING, False, None),
        (3, "surface", _F.TYPE_STRING, False, None),
        (4, "user_id", _F.TYPE_STRING, False, None),
        (5, "served_at", _F.TYPE_MESSAGE, False, "Timestamp"),
        (6, "context", _F.TYPE_BYTES, False, None),  # recsys_rl.ranking.v1.Features, unparsed
        (7, "candidates", _F.TYPE_BYTES, True, None),  # recsys_rl.ranking.v1.Candidate, unparsed
        (8, "slate_size", _F.TYPE_INT32, False, None),
        (9, "slate", _F.TYPE_MESSAGE, True, "LoggedSlot"),
        (10, "slate_propensity", _F.TYPE_DOUBLE, False, None),
        (11, "policy_version", _F.TYPE_STRING, False, None),
        (12, "serving_mode", _F.TYPE_INT32, False, None),  # enum ServingMode: same varint encoding
        (13, "exploration", _F.TYPE_MESSAGE, False, "ExplorationParams"),
    ],
    "OutcomeEvent": [
        (1, "event_id", _F.TYPE_STRING, False, None),
        (2, "item_id", _F.TYPE_STRING, False, None),
        (3, "outcome", _F.TYPE_STRING, False, None),
        (4, "value", _F.TYPE_DOUBLE, False, None),
        (5, "occurred_at", _F.TYPE_MESSAGE, False, "Timestamp"),
        (6, "received_at", _F.TYPE_MESSAGE, False, "Timestamp"),
        (7, "surface", _F.TYPE_STRING, False, None),
        (8, "attributed", _F.TYPE_BOOL, False, None),
        (9, "outcome_id", _F.TYPE_STRING, False, None),
    ],
    "LogRecord": [
        (1, "decision", _F.TYPE_MESSAGE, False, "DecisionEvent"),
        (2, "outcome", _F.TYPE_MESSAGE, False, "OutcomeEvent"),
    ],
}


def _build() -> descriptor_pool.DescriptorPool:
    file = descriptor_pb2.FileDescriptorProto(name=f"{PACKAGE}.proto", package=PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        if name == "LogRecord":
            message.oneof_decl.add(name="event")
        for number, field_name, field_type, repeated, type_name in fields:
            field = message.field.add(
                name=field_name,
                number=number,
                type=field_type,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            )
            if type_name:
                field.type_name = f".{PACKAGE}.{type_name}"
            if name == "LogRecord":
                field.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


POOL = _build()
TableRecord: type[Message] = message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.LogRecord"))
