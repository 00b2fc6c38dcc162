import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVING_MODE_UNSPECIFIED: _ClassVar[ServingMode]
    SERVING_MODE_LEARNED: _ClassVar[ServingMode]
    SERVING_MODE_BASELINE_FALLBACK: _ClassVar[ServingMode]
    SERVING_MODE_SHADOW: _ClassVar[ServingMode]
    SERVING_MODE_CANARY: _ClassVar[ServingMode]
    SERVING_MODE_BASELINE: _ClassVar[ServingMode]
SERVING_MODE_UNSPECIFIED: ServingMode
SERVING_MODE_LEARNED: ServingMode
SERVING_MODE_BASELINE_FALLBACK: ServingMode
SERVING_MODE_SHADOW: ServingMode
SERVING_MODE_CANARY: ServingMode
SERVING_MODE_BASELINE: ServingMode

class Features(_message.Message):
    __slots__ = ("numeric", "categorical", "tags")
    class NumericEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CategoricalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    numeric: _containers.ScalarMap[str, float]
    categorical: _containers.ScalarMap[str, str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, numeric: _Optional[_Mapping[str, float]] = ..., categorical: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "features", "embedding", "baseline_score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    features: Features
    embedding: _containers.RepeatedScalarFieldContainer[float]
    baseline_score: float
    def __init__(self, item_id: _Optional[str] = ..., features: _Optional[_Union[Features, _Mapping]] = ..., embedding: _Optional[_Iterable[float]] = ..., baseline_score: _Optional[float] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("request_id", "surface", "user_id", "context", "candidates", "slate_size", "retrieval")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SLATE_SIZE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    surface: str
    user_id: str
    context: Features
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    slate_size: int
    retrieval: Retrieval
    def __init__(self, request_id: _Optional[str] = ..., surface: _Optional[str] = ..., user_id: _Optional[str] = ..., context: _Optional[_Union[Features, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., slate_size: _Optional[int] = ..., retrieval: _Optional[_Union[Retrieval, _Mapping]] = ...) -> None: ...

class Retrieval(_message.Message):
    __slots__ = ("size", "query_embedding")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    QUERY_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    size: int
    query_embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, size: _Optional[int] = ..., query_embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class SlateItem(_message.Message):
    __slots__ = ("item_id", "position", "propensity", "score", "explored")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    position: int
    propensity: float
    score: float
    explored: bool
    def __init__(self, item_id: _Optional[str] = ..., position: _Optional[int] = ..., propensity: _Optional[float] = ..., score: _Optional[float] = ..., explored: _Optional[bool] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("event_id", "slate", "slate_propensity", "policy_version", "serving_mode", "exploration_cap", "fallback_reason")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SLATE_FIELD_NUMBER: _ClassVar[int]
    SLATE_PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_MODE_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_CAP_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    slate: _containers.RepeatedCompositeFieldContainer[SlateItem]
    slate_propensity: float
    policy_version: str
    serving_mode: ServingMode
    exploration_cap: float
    fallback_reason: str
    def __init__(self, event_id: _Optional[str] = ..., slate: _Optional[_Iterable[_Union[SlateItem, _Mapping]]] = ..., slate_propensity: _Optional[float] = ..., policy_version: _Optional[str] = ..., serving_mode: _Optional[_Union[ServingMode, str]] = ..., exploration_cap: _Optional[float] = ..., fallback_reason: _Optional[str] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("event_id", "item_id", "outcome", "value", "occurred_at", "outcome_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    item_id: str
    outcome: str
    value: float
    occurred_at: _timestamp_pb2.Timestamp
    outcome_id: str
    def __init__(self, event_id: _Optional[str] = ..., item_id: _Optional[str] = ..., outcome: _Optional[str] = ..., value: _Optional[float] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome_id: _Optional[str] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("attributed", "duplicate")
    ATTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    attributed: bool
    duplicate: bool
    def __init__(self, attributed: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...
