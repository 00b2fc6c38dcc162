import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from recsys_rl.ranking.v1 import ranking_service_pb2 as _ranking_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogRecord(_message.Message):
    __slots__ = ("decision", "outcome", "gap")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    decision: DecisionEvent
    outcome: OutcomeEvent
    gap: LogGap
    def __init__(self, decision: _Optional[_Union[DecisionEvent, _Mapping]] = ..., outcome: _Optional[_Union[OutcomeEvent, _Mapping]] = ..., gap: _Optional[_Union[LogGap, _Mapping]] = ...) -> None: ...

class LogGap(_message.Message):
    __slots__ = ("first_unlogged_at", "last_unlogged_at", "decisions_unlogged", "decisions_unlogged_by_surface", "outcomes_refused", "reason", "recorded_at")
    class DecisionsUnloggedBySurfaceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FIRST_UNLOGGED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_UNLOGGED_AT_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_UNLOGGED_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_UNLOGGED_BY_SURFACE_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_REFUSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    first_unlogged_at: _timestamp_pb2.Timestamp
    last_unlogged_at: _timestamp_pb2.Timestamp
    decisions_unlogged: int
    decisions_unlogged_by_surface: _containers.ScalarMap[str, int]
    outcomes_refused: int
    reason: str
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, first_unlogged_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_unlogged_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decisions_unlogged: _Optional[int] = ..., decisions_unlogged_by_surface: _Optional[_Mapping[str, int]] = ..., outcomes_refused: _Optional[int] = ..., reason: _Optional[str] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExplorationParams(_message.Message):
    __slots__ = ("algorithm", "epsilon", "temperature", "gamma", "cap", "server_seed", "draw_key")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    SERVER_SEED_FIELD_NUMBER: _ClassVar[int]
    DRAW_KEY_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    epsilon: float
    temperature: float
    gamma: float
    cap: float
    server_seed: int
    draw_key: int
    def __init__(self, algorithm: _Optional[str] = ..., epsilon: _Optional[float] = ..., temperature: _Optional[float] = ..., gamma: _Optional[float] = ..., cap: _Optional[float] = ..., server_seed: _Optional[int] = ..., draw_key: _Optional[int] = ...) -> None: ...

class LoggedSlot(_message.Message):
    __slots__ = ("item_id", "position", "propensity", "score", "explored", "candidate_index", "exploration_mass", "draw", "outside_probability")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_INDEX_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_MASS_FIELD_NUMBER: _ClassVar[int]
    DRAW_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    position: int
    propensity: float
    score: float
    explored: bool
    candidate_index: int
    exploration_mass: float
    draw: float
    outside_probability: float
    def __init__(self, item_id: _Optional[str] = ..., position: _Optional[int] = ..., propensity: _Optional[float] = ..., score: _Optional[float] = ..., explored: _Optional[bool] = ..., candidate_index: _Optional[int] = ..., exploration_mass: _Optional[float] = ..., draw: _Optional[float] = ..., outside_probability: _Optional[float] = ...) -> None: ...

class DecisionEvent(_message.Message):
    __slots__ = ("event_id", "request_id", "surface", "user_id", "served_at", "context", "candidates", "slate_size", "slate", "slate_propensity", "policy_version", "serving_mode", "exploration", "fallback_reason", "shield_rules_fired", "attribution_window_seconds", "latency_micros", "long_term", "rollout_stage", "shadow", "shield_version", "baseline_version", "candidate_scores", "catalog_version", "retrieval")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVED_AT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SLATE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SLATE_FIELD_NUMBER: _ClassVar[int]
    SLATE_PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_MODE_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    SHIELD_RULES_FIRED_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MICROS_FIELD_NUMBER: _ClassVar[int]
    LONG_TERM_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_STAGE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SHIELD_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SCORES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    request_id: str
    surface: str
    user_id: str
    served_at: _timestamp_pb2.Timestamp
    context: _ranking_service_pb2.Features
    candidates: _containers.RepeatedCompositeFieldContainer[_ranking_service_pb2.Candidate]
    slate_size: int
    slate: _containers.RepeatedCompositeFieldContainer[LoggedSlot]
    slate_propensity: float
    policy_version: str
    serving_mode: _ranking_service_pb2.ServingMode
    exploration: ExplorationParams
    fallback_reason: str
    shield_rules_fired: _containers.RepeatedScalarFieldContainer[str]
    attribution_window_seconds: float
    latency_micros: int
    long_term: LongTermState
    rollout_stage: str
    shadow: ShadowDecision
    shield_version: str
    baseline_version: str
    candidate_scores: _containers.RepeatedScalarFieldContainer[float]
    catalog_version: str
    retrieval: RetrievalRecord
    def __init__(self, event_id: _Optional[str] = ..., request_id: _Optional[str] = ..., surface: _Optional[str] = ..., user_id: _Optional[str] = ..., served_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context: _Optional[_Union[_ranking_service_pb2.Features, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[_ranking_service_pb2.Candidate, _Mapping]]] = ..., slate_size: _Optional[int] = ..., slate: _Optional[_Iterable[_Union[LoggedSlot, _Mapping]]] = ..., slate_propensity: _Optional[float] = ..., policy_version: _Optional[str] = ..., serving_mode: _Optional[_Union[_ranking_service_pb2.ServingMode, str]] = ..., exploration: _Optional[_Union[ExplorationParams, _Mapping]] = ..., fallback_reason: _Optional[str] = ..., shield_rules_fired: _Optional[_Iterable[str]] = ..., attribution_window_seconds: _Optional[float] = ..., latency_micros: _Optional[int] = ..., long_term: _Optional[_Union[LongTermState, _Mapping]] = ..., rollout_stage: _Optional[str] = ..., shadow: _Optional[_Union[ShadowDecision, _Mapping]] = ..., shield_version: _Optional[str] = ..., baseline_version: _Optional[str] = ..., candidate_scores: _Optional[_Iterable[float]] = ..., catalog_version: _Optional[str] = ..., retrieval: _Optional[_Union[RetrievalRecord, _Mapping]] = ...) -> None: ...

class RetrievalRecord(_message.Message):
    __slots__ = ("index_version", "catalog_version", "index_type", "size", "nlist", "nprobe", "ef_search", "host_candidates", "retrieved_candidates", "outside_candidates", "outside_share", "query_embedding", "outside_pool", "query_source", "recall_target", "measured_recall")
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NLIST_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    HOST_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RETRIEVED_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_SHARE_FIELD_NUMBER: _ClassVar[int]
    QUERY_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_POOL_FIELD_NUMBER: _ClassVar[int]
    QUERY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    RECALL_TARGET_FIELD_NUMBER: _ClassVar[int]
    MEASURED_RECALL_FIELD_NUMBER: _ClassVar[int]
    index_version: str
    catalog_version: str
    index_type: str
    size: int
    nlist: int
    nprobe: int
    ef_search: int
    host_candidates: int
    retrieved_candidates: int
    outside_candidates: int
    outside_share: float
    query_embedding: _containers.RepeatedScalarFieldContainer[float]
    outside_pool: int
    query_source: str
    recall_target: float
    measured_recall: float
    def __init__(self, index_version: _Optional[str] = ..., catalog_version: _Optional[str] = ..., index_type: _Optional[str] = ..., size: _Optional[int] = ..., nlist: _Optional[int] = ..., nprobe: _Optional[int] = ..., ef_search: _Optional[int] = ..., host_candidates: _Optional[int] = ..., retrieved_candidates: _Optional[int] = ..., outside_candidates: _Optional[int] = ..., outside_share: _Optional[float] = ..., query_embedding: _Optional[_Iterable[float]] = ..., outside_pool: _Optional[int] = ..., query_source: _Optional[str] = ..., recall_target: _Optional[float] = ..., measured_recall: _Optional[float] = ...) -> None: ...

class ShadowDecision(_message.Message):
    __slots__ = ("slate", "slate_propensity", "policy_version", "exploration", "fallback_reason", "latency_micros", "candidate_scores")
    SLATE_FIELD_NUMBER: _ClassVar[int]
    SLATE_PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MICROS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SCORES_FIELD_NUMBER: _ClassVar[int]
    slate: _containers.RepeatedCompositeFieldContainer[LoggedSlot]
    slate_propensity: float
    policy_version: str
    exploration: ExplorationParams
    fallback_reason: str
    latency_micros: int
    candidate_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, slate: _Optional[_Iterable[_Union[LoggedSlot, _Mapping]]] = ..., slate_propensity: _Optional[float] = ..., policy_version: _Optional[str] = ..., exploration: _Optional[_Union[ExplorationParams, _Mapping]] = ..., fallback_reason: _Optional[str] = ..., latency_micros: _Optional[int] = ..., candidate_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class LongTermState(_message.Message):
    __slots__ = ("model_version", "weight", "history")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    weight: float
    history: _containers.RepeatedCompositeFieldContainer[_ranking_service_pb2.Candidate]
    def __init__(self, model_version: _Optional[str] = ..., weight: _Optional[float] = ..., history: _Optional[_Iterable[_Union[_ranking_service_pb2.Candidate, _Mapping]]] = ...) -> None: ...

class OutcomeEvent(_message.Message):
    __slots__ = ("event_id", "item_id", "outcome", "value", "occurred_at", "received_at", "surface", "attributed", "outcome_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    item_id: str
    outcome: str
    value: float
    occurred_at: _timestamp_pb2.Timestamp
    received_at: _timestamp_pb2.Timestamp
    surface: str
    attributed: bool
    outcome_id: str
    def __init__(self, event_id: _Optional[str] = ..., item_id: _Optional[str] = ..., outcome: _Optional[str] = ..., value: _Optional[float] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., surface: _Optional[str] = ..., attributed: _Optional[bool] = ..., outcome_id: _Optional[str] = ...) -> None: ...

class CompanionSeal(_message.Message):
    __slots__ = ("segment", "segment_bytes", "records")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    segment: str
    segment_bytes: int
    records: int
    def __init__(self, segment: _Optional[str] = ..., segment_bytes: _Optional[int] = ..., records: _Optional[int] = ...) -> None: ...

class CompanionEntry(_message.Message):
    __slots__ = ("record", "candidate_count", "segment_offset")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    record: LogRecord
    candidate_count: int
    segment_offset: int
    def __init__(self, record: _Optional[_Union[LogRecord, _Mapping]] = ..., candidate_count: _Optional[int] = ..., segment_offset: _Optional[int] = ...) -> None: ...
