"""Wire-compatible "table views" of LogRecord that skip parsing what the tables do not need.

Parsing a DecisionEvent with 100 candidates costs ~60 µs in Python protobuf (upb), almost all of it in the
candidates' and context's feature maps - which the decision table never reads (it only needs the number
of candidates). ``TableRecord`` declares the same field numbers as ``recsys_rl.logging.v1.LogRecord`` but
types ``context`` and each candidate as opaque ``bytes`` (wire-compatible with an embedded message), so
upb copies them instead of building maps: ~12 µs for the same record. Fields the tables do not use are
simply not declared; protobuf keeps them as unknown fields.

The descriptor is built here, in a private pool, from the real descriptors' field numbers and types (only the
choice of fields and which of them stay opaque is written here), so it never collides with the real messages and
cannot drift from events.proto. ``tests/logging_schema/test_views.py`` checks the view against the real messages.

``WireRecord`` is the same idea for writing: events.proto whole, except that a DecisionEvent's ``context`` and
``candidates`` (and ``long_term.history``) are opaque bytes. The serving path already holds each candidate
serialized (``recsys_rl.serving.candidates.CandidateView``), so the log writer's thread copies 100 byte strings
instead of building 100 Candidate messages with their feature maps (~100 µs a decision, with the GIL held while the
next Rank waits); it serializes to bytes that parse as the LogRecord they stand for.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from recsys_rl.logging.v1 import events_pb2


def varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint: for writing wire-level prefixes (tags, lengths) by hand where
    building a message would cost more (companion entries, a rebuilt RankRequest, the shield's embedding view)."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

_F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "recsys_rl_tableview"
REPLAY_PACKAGE = "recsys_rl_replayview"

# A view: message name -> (the real message, the fields it declares, those kept as opaque bytes). Field numbers and
# types are read from the real descriptors, so a view cannot drift from events.proto; an embedded message kept as
# bytes is wire-compatible (length-delimited either way), and so is an enum read as int32 (varint). A repeated
# scalar kept opaque becomes one ``bytes`` field: its packed encoding (proto3's default, and what every writer of
# these logs emits) is one length-delimited field, so the view holds the raw little-endian array (see ReplayRecord).
_View = dict[str, tuple[Descriptor, tuple[str, ...], frozenset[str]]]

_DECISION_FIELDS = (
    "event_id", "request_id", "surface", "user_id", "served_at", "context", "candidates", "slate_size", "slate",
    "slate_propensity", "policy_version", "serving_mode", "exploration", "long_term", "rollout_stage",
    "shield_version", "baseline_version", "candidate_scores",
)
_COMMON: _View = {
    "Timestamp": (Timestamp.DESCRIPTOR, ("seconds", "nanos"), frozenset()),
    "ExplorationParams": (events_pb2.ExplorationParams.DESCRIPTOR,
                          ("algorithm", "epsilon", "temperature", "gamma", "cap"), frozenset()),
    # A logged candidate's item id alone (its features skipped as unknown fields): replay from logged scores checks
    # the logged slots against it without parsing feature maps.
    "CandidateId": (events_pb2.DecisionEvent.DESCRIPTOR.fields_by_name["candidates"].message_type, ("item_id",),
                    frozenset()),
    "OutcomeEvent": (events_pb2.OutcomeEvent.DESCRIPTOR, (
        "event_id", "item_id", "outcome", "value", "occurred_at", "received_at", "surface", "attributed",
        "outcome_id",
    ), frozenset()),
    "LogRecord": (events_pb2.LogRecord.DESCRIPTOR, ("decision", "outcome", "gap"), frozenset({"gap"})),
}
_TABLE_VIEWS: _View = _COMMON | {
    "LoggedSlot": (events_pb2.LoggedSlot.DESCRIPTOR, (
        "item_id", "position", "propensity", "score", "explored", "candidate_index", "exploration_mass",
    ), frozenset()),
    "DecisionEvent": (events_pb2.DecisionEvent.DESCRIPTOR, _DECISION_FIELDS,
                      frozenset({"context", "candidates", "long_term"})),  # Features, Candidate, LongTermState: unparsed
}
# Replay's view: as the table view, but the slots keep only what replay reads, and the candidates' scores stay the
# packed bytes they were written as (np.frombuffer instead of building 100 Python floats: ~12 µs a decision).
# A retrieval decision's counts and outside-exploration share come along: replay recomputes the propensities of
# slots drawn beyond the retrieved set from them (evaluators.replay.outside).
_REPLAY_VIEWS: _View = _COMMON | {
    "LoggedSlot": (events_pb2.LoggedSlot.DESCRIPTOR, ("item_id", "position", "propensity", "candidate_index",
                                                      "outside_probability"), frozenset()),
    "RetrievalRecord": (events_pb2.RetrievalRecord.DESCRIPTOR, (
        "host_candidates", "retrieved_candidates", "outside_candidates", "outside_share", "outside_pool",
    ), frozenset()),
    "DecisionEvent": (events_pb2.DecisionEvent.DESCRIPTOR, (*_DECISION_FIELDS, "retrieval"),
                      frozenset({"context", "candidates", "long_term", "candidate_scores"})),
    # A what-if companion's entry (logging_schema.companions), its record read as the replay view above.
    "CompanionEntry": (events_pb2.CompanionEntry.DESCRIPTOR, ("record", "candidate_count", "segment_offset"),
                       frozenset()),
}


def _build(package: str, views: _View) -> descriptor_pool.DescriptorPool:
    file = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto3")
    for name, (real, field_names, opaque) in views.items():
        message = file.message_type.add(name=name)
        if name == "LogRecord":
            message.oneof_decl.add(name="event")
        for field_name in field_names:
            source = real.fields_by_name[field_name]
            packed = field_name in opaque and source.type != FieldDescriptor.TYPE_MESSAGE and source.is_repeated
            repeated = source.is_repeated and not packed
            field = message.field.add(name=field_name, number=source.number,
                                      label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if field_name in opaque:
                field.type = _F.TYPE_BYTES
            elif source.type == FieldDescriptor.TYPE_ENUM:
                field.type = _F.TYPE_INT32
            elif source.type == FieldDescriptor.TYPE_MESSAGE:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{package}.{source.message_type.name}"
            else:
                field.type = source.type
            if name == "LogRecord":
                field.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


def _message(pool: descriptor_pool.DescriptorPool, package: str, name: str) -> type[Message]:
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))


POOL = _build(PACKAGE, _TABLE_VIEWS)
TableRecord: type[Message] = _message(POOL, PACKAGE, "LogRecord")
CandidateId: type[Message] = _message(POOL, PACKAGE, "CandidateId")
REPLAY_POOL = _build(REPLAY_PACKAGE, _REPLAY_VIEWS)
# ``decision.candidate_scores`` is the packed array's raw bytes (8 per candidate, little-endian doubles): b"" when
# no scores were logged, and when a writer emitted them unpacked (another wire type: kept as an unknown field).
ReplayRecord: type[Message] = _message(REPLAY_POOL, REPLAY_PACKAGE, "LogRecord")
# A companion entry whose ``record`` is a ReplayRecord (a decision without context and candidates).
ReplayEntry: type[Message] = _message(REPLAY_POOL, REPLAY_PACKAGE, "CompanionEntry")

# A DecisionEvent's candidates' baseline scores alone (everything else skipped as unknown fields). With the table
# view's candidate bytes they give each candidate's serving-side cache key (``recsys_rl.serving.candidates.item_key``:
# the bytes without the trailing baseline record) without parsing the candidates' feature maps: the online learner
# keys its cache of parsed VW examples by them.
BASELINE_PACKAGE = "recsys_rl_baselineview"
_CANDIDATE = events_pb2.DecisionEvent.DESCRIPTOR.fields_by_name["candidates"].message_type
BASELINE_POOL = _build(BASELINE_PACKAGE, {
    _CANDIDATE.name: (_CANDIDATE, ("baseline_score",), frozenset()),
    "DecisionEvent": (events_pb2.DecisionEvent.DESCRIPTOR, ("candidates",), frozenset()),
})
CandidateBaselines: type[Message] = _message(BASELINE_POOL, BASELINE_PACKAGE, "DecisionEvent")

# A decision's surface and shield rules version alone (candidates, context and slots skipped as unknown fields):
# which stored shield versions the log's decisions name, i.e. which ones replay will load (``shield gc`` keeps them).
VERSIONS_PACKAGE = "recsys_rl_versionsview"
VERSIONS_POOL = _build(VERSIONS_PACKAGE, {
    "DecisionEvent": (events_pb2.DecisionEvent.DESCRIPTOR, ("surface", "shield_version"), frozenset()),
    "LogRecord": (events_pb2.LogRecord.DESCRIPTOR, ("decision", "outcome", "gap"), frozenset({"outcome", "gap"})),
})
VersionsRecord: type[Message] = _message(VERSIONS_POOL, VERSIONS_PACKAGE, "LogRecord")


# --- writing ------------------------------------------------------------------------------------------------------
WIRE_PACKAGE = "recsys_rl_wireview"
# (message, field) of events.proto written as opaque bytes: messages the request brought, copied as they arrived.
_WIRE_OPAQUE = frozenset({("DecisionEvent", "context"), ("DecisionEvent", "candidates"), ("LongTermState", "history")})


def _build_wire() -> descriptor_pool.DescriptorPool:
    """events.proto (and what it imports) in a private pool, under WIRE_PACKAGE, with _WIRE_OPAQUE as bytes."""
    pool = descriptor_pool.DescriptorPool()
    for dependency in events_pb2.DESCRIPTOR.dependencies:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(dependency.serialized_pb))
    file = descriptor_pb2.FileDescriptorProto.FromString(events_pb2.DESCRIPTOR.serialized_pb)
    real_prefix = f".{file.package}."
    file.name, file.package = f"{WIRE_PACKAGE}/events.proto", WIRE_PACKAGE
    for message in file.message_type:
        for field in message.field:
            if (message.name, field.name) in _WIRE_OPAQUE:
                field.type = _F.TYPE_BYTES
                field.ClearField("type_name")  # proto2: an empty string would still count as set
            elif field.type_name.startswith(real_prefix):
                field.type_name = f".{WIRE_PACKAGE}.{field.type_name[len(real_prefix):]}"
    pool.Add(file)
    return pool


WIRE_POOL = _build_wire()
WireRecord: type[Message] = message_factory.GetMessageClass(
    WIRE_POOL.FindMessageTypeByName(f"{WIRE_PACKAGE}.LogRecord"))
