import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CapChangeOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAP_CHANGE_OUTCOME_UNSPECIFIED: _ClassVar[CapChangeOutcome]
    CAP_CHANGE_OUTCOME_ACCEPTED: _ClassVar[CapChangeOutcome]
    CAP_CHANGE_OUTCOME_REFUSED: _ClassVar[CapChangeOutcome]
CAP_CHANGE_OUTCOME_UNSPECIFIED: CapChangeOutcome
CAP_CHANGE_OUTCOME_ACCEPTED: CapChangeOutcome
CAP_CHANGE_OUTCOME_REFUSED: CapChangeOutcome

class CapChange(_message.Message):
    __slots__ = ("sequence", "changed_at", "surface", "actor", "old_cap", "new_cap", "reason", "evidence_digest", "outcome", "failed_checks")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    OLD_CAP_FIELD_NUMBER: _ClassVar[int]
    NEW_CAP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    changed_at: _timestamp_pb2.Timestamp
    surface: str
    actor: str
    old_cap: float
    new_cap: float
    reason: str
    evidence_digest: str
    outcome: CapChangeOutcome
    failed_checks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sequence: _Optional[int] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., surface: _Optional[str] = ..., actor: _Optional[str] = ..., old_cap: _Optional[float] = ..., new_cap: _Optional[float] = ..., reason: _Optional[str] = ..., evidence_digest: _Optional[str] = ..., outcome: _Optional[_Union[CapChangeOutcome, str]] = ..., failed_checks: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSurfaceRequest(_message.Message):
    __slots__ = ("surface", "history_limit")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    surface: str
    history_limit: int
    def __init__(self, surface: _Optional[str] = ..., history_limit: _Optional[int] = ...) -> None: ...

class GetSurfaceResponse(_message.Message):
    __slots__ = ("surface", "exploration_cap", "configured_cap", "policy_version", "history")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_CAP_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_CAP_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    surface: str
    exploration_cap: float
    configured_cap: float
    policy_version: str
    history: _containers.RepeatedCompositeFieldContainer[CapChange]
    def __init__(self, surface: _Optional[str] = ..., exploration_cap: _Optional[float] = ..., configured_cap: _Optional[float] = ..., policy_version: _Optional[str] = ..., history: _Optional[_Iterable[_Union[CapChange, _Mapping]]] = ...) -> None: ...

class SetExplorationCapRequest(_message.Message):
    __slots__ = ("surface", "cap", "evidence", "actor", "reason")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    surface: str
    cap: float
    evidence: str
    actor: str
    reason: str
    def __init__(self, surface: _Optional[str] = ..., cap: _Optional[float] = ..., evidence: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetExplorationCapResponse(_message.Message):
    __slots__ = ("exploration_cap", "old_cap", "policy_version", "change")
    EXPLORATION_CAP_FIELD_NUMBER: _ClassVar[int]
    OLD_CAP_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    exploration_cap: float
    old_cap: float
    policy_version: str
    change: CapChange
    def __init__(self, exploration_cap: _Optional[float] = ..., old_cap: _Optional[float] = ..., policy_version: _Optional[str] = ..., change: _Optional[_Union[CapChange, _Mapping]] = ...) -> None: ...
