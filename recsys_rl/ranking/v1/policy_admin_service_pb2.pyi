import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STAGE_UNSPECIFIED: _ClassVar[RolloutStage]
    ROLLOUT_STAGE_BASELINE: _ClassVar[RolloutStage]
    ROLLOUT_STAGE_SHADOW: _ClassVar[RolloutStage]
    ROLLOUT_STAGE_CANARY: _ClassVar[RolloutStage]
    ROLLOUT_STAGE_LIVE: _ClassVar[RolloutStage]

class CapChangeOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAP_CHANGE_OUTCOME_UNSPECIFIED: _ClassVar[CapChangeOutcome]
    CAP_CHANGE_OUTCOME_ACCEPTED: _ClassVar[CapChangeOutcome]
    CAP_CHANGE_OUTCOME_REFUSED: _ClassVar[CapChangeOutcome]
ROLLOUT_STAGE_UNSPECIFIED: RolloutStage
ROLLOUT_STAGE_BASELINE: RolloutStage
ROLLOUT_STAGE_SHADOW: RolloutStage
ROLLOUT_STAGE_CANARY: RolloutStage
ROLLOUT_STAGE_LIVE: RolloutStage
CAP_CHANGE_OUTCOME_UNSPECIFIED: CapChangeOutcome
CAP_CHANGE_OUTCOME_ACCEPTED: CapChangeOutcome
CAP_CHANGE_OUTCOME_REFUSED: CapChangeOutcome

class BlockedValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ShieldRuleSet(_message.Message):
    __slots__ = ("blocked_items", "blocked_items_file", "blocked_values", "max_per_value", "pinned", "min_feasible", "blocked_items_count", "near_duplicates")
    class BlockedValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: BlockedValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[BlockedValues, _Mapping]] = ...) -> None: ...
    class MaxPerValueEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class PinnedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BLOCKED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_ITEMS_FILE_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_VALUES_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_VALUE_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    MIN_FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_ITEMS_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    blocked_items: _containers.RepeatedScalarFieldContainer[str]
    blocked_items_file: str
    blocked_values: _containers.MessageMap[str, BlockedValues]
    max_per_value: _containers.ScalarMap[str, int]
    pinned: _containers.ScalarMap[str, int]
    min_feasible: int
    blocked_items_count: int
    near_duplicates: NearDuplicates
    def __init__(self, blocked_items: _Optional[_Iterable[str]] = ..., blocked_items_file: _Optional[str] = ..., blocked_values: _Optional[_Mapping[str, BlockedValues]] = ..., max_per_value: _Optional[_Mapping[str, int]] = ..., pinned: _Optional[_Mapping[str, int]] = ..., min_feasible: _Optional[int] = ..., blocked_items_count: _Optional[int] = ..., near_duplicates: _Optional[_Union[NearDuplicates, _Mapping]] = ...) -> None: ...

class NearDuplicates(_message.Message):
    __slots__ = ("max_cosine",)
    MAX_COSINE_FIELD_NUMBER: _ClassVar[int]
    max_cosine: float
    def __init__(self, max_cosine: _Optional[float] = ...) -> None: ...

class ShieldChange(_message.Message):
    __slots__ = ("sequence", "changed_at", "surface", "actor", "old_version", "new_version", "reason", "summary")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    OLD_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    changed_at: _timestamp_pb2.Timestamp
    surface: str
    actor: str
    old_version: str
    new_version: str
    reason: str
    summary: str
    def __init__(self, sequence: _Optional[int] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., surface: _Optional[str] = ..., actor: _Optional[str] = ..., old_version: _Optional[str] = ..., new_version: _Optional[str] = ..., reason: _Optional[str] = ..., summary: _Optional[str] = ...) -> None: ...

class GetShieldRequest(_message.Message):
    __slots__ = ("surface", "history_limit", "include_blocked_items")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BLOCKED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    surface: str
    history_limit: int
    include_blocked_items: bool
    def __init__(self, surface: _Optional[str] = ..., history_limit: _Optional[int] = ..., include_blocked_items: _Optional[bool] = ...) -> None: ...

class GetShieldResponse(_message.Message):
    __slots__ = ("surface", "version", "rules", "history")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    surface: str
    version: str
    rules: ShieldRuleSet
    history: _containers.RepeatedCompositeFieldContainer[ShieldChange]
    def __init__(self, surface: _Optional[str] = ..., version: _Optional[str] = ..., rules: _Optional[_Union[ShieldRuleSet, _Mapping]] = ..., history: _Optional[_Iterable[_Union[ShieldChange, _Mapping]]] = ...) -> None: ...

class SetShieldRequest(_message.Message):
    __slots__ = ("surface", "rules", "replace_rules", "block_items", "unblock_items", "expected_version", "actor", "reason")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_RULES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ITEMS_FIELD_NUMBER: _ClassVar[int]
    UNBLOCK_ITEMS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    surface: str
    rules: ShieldRuleSet
    replace_rules: bool
    block_items: _containers.RepeatedScalarFieldContainer[str]
    unblock_items: _containers.RepeatedScalarFieldContainer[str]
    expected_version: str
    actor: str
    reason: str
    def __init__(self, surface: _Optional[str] = ..., rules: _Optional[_Union[ShieldRuleSet, _Mapping]] = ..., replace_rules: _Optional[bool] = ..., block_items: _Optional[_Iterable[str]] = ..., unblock_items: _Optional[_Iterable[str]] = ..., expected_version: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetShieldResponse(_message.Message):
    __slots__ = ("version", "old_version", "change")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OLD_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    version: str
    old_version: str
    change: ShieldChange
    def __init__(self, version: _Optional[str] = ..., old_version: _Optional[str] = ..., change: _Optional[_Union[ShieldChange, _Mapping]] = ...) -> None: ...

class GuardrailState(_message.Message):
    __slots__ = ("canary_decisions", "control_decisions", "canary_mean_reward", "control_mean_reward", "difference_low", "difference_high", "tolerance", "alpha", "canary_fallback_rate", "canary_latency_p50_ms", "status")
    CANARY_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CANARY_MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    CONTROL_MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_LOW_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_HIGH_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    CANARY_FALLBACK_RATE_FIELD_NUMBER: _ClassVar[int]
    CANARY_LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    canary_decisions: int
    control_decisions: int
    canary_mean_reward: float
    control_mean_reward: float
    difference_low: float
    difference_high: float
    tolerance: float
    alpha: float
    canary_fallback_rate: float
    canary_latency_p50_ms: float
    status: str
    def __init__(self, canary_decisions: _Optional[int] = ..., control_decisions: _Optional[int] = ..., canary_mean_reward: _Optional[float] = ..., control_mean_reward: _Optional[float] = ..., difference_low: _Optional[float] = ..., difference_high: _Optional[float] = ..., tolerance: _Optional[float] = ..., alpha: _Optional[float] = ..., canary_fallback_rate: _Optional[float] = ..., canary_latency_p50_ms: _Optional[float] = ..., status: _Optional[str] = ...) -> None: ...

class ShadowStats(_message.Message):
    __slots__ = ("decisions", "top1_match", "overlap_at_k", "added_latency_p50_ms", "fallback_rate")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    TOP1_MATCH_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_AT_K_FIELD_NUMBER: _ClassVar[int]
    ADDED_LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_RATE_FIELD_NUMBER: _ClassVar[int]
    decisions: int
    top1_match: float
    overlap_at_k: float
    added_latency_p50_ms: float
    fallback_rate: float
    def __init__(self, decisions: _Optional[int] = ..., top1_match: _Optional[float] = ..., overlap_at_k: _Optional[float] = ..., added_latency_p50_ms: _Optional[float] = ..., fallback_rate: _Optional[float] = ...) -> None: ...

class RolloutChange(_message.Message):
    __slots__ = ("sequence", "changed_at", "surface", "actor", "old_stage", "new_stage", "old_canary_share", "new_canary_share", "reason", "outcome", "failed_checks", "automatic", "evidence_json")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    OLD_STAGE_FIELD_NUMBER: _ClassVar[int]
    NEW_STAGE_FIELD_NUMBER: _ClassVar[int]
    OLD_CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    NEW_CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIC_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_JSON_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    changed_at: _timestamp_pb2.Timestamp
    surface: str
    actor: str
    old_stage: RolloutStage
    new_stage: RolloutStage
    old_canary_share: float
    new_canary_share: float
    reason: str
    outcome: CapChangeOutcome
    failed_checks: _containers.RepeatedScalarFieldContainer[str]
    automatic: bool
    evidence_json: str
    def __init__(self, sequence: _Optional[int] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., surface: _Optional[str] = ..., actor: _Optional[str] = ..., old_stage: _Optional[_Union[RolloutStage, str]] = ..., new_stage: _Optional[_Union[RolloutStage, str]] = ..., old_canary_share: _Optional[float] = ..., new_canary_share: _Optional[float] = ..., reason: _Optional[str] = ..., outcome: _Optional[_Union[CapChangeOutcome, str]] = ..., failed_checks: _Optional[_Iterable[str]] = ..., automatic: _Optional[bool] = ..., evidence_json: _Optional[str] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("surface", "history_limit")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    surface: str
    history_limit: int
    def __init__(self, surface: _Optional[str] = ..., history_limit: _Optional[int] = ...) -> None: ...

class GetRolloutResponse(_message.Message):
    __slots__ = ("surface", "stage", "canary_share", "reverted", "guardrail", "shadow", "history", "workers")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    REVERTED_FIELD_NUMBER: _ClassVar[int]
    GUARDRAIL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    surface: str
    stage: RolloutStage
    canary_share: float
    reverted: bool
    guardrail: GuardrailState
    shadow: ShadowStats
    history: _containers.RepeatedCompositeFieldContainer[RolloutChange]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerRollout]
    def __init__(self, surface: _Optional[str] = ..., stage: _Optional[_Union[RolloutStage, str]] = ..., canary_share: _Optional[float] = ..., reverted: _Optional[bool] = ..., guardrail: _Optional[_Union[GuardrailState, _Mapping]] = ..., shadow: _Optional[_Union[ShadowStats, _Mapping]] = ..., history: _Optional[_Iterable[_Union[RolloutChange, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerRollout, _Mapping]]] = ...) -> None: ...

class WorkerRollout(_message.Message):
    __slots__ = ("worker", "pid", "rollout_sequence", "status", "guardrail", "shadow")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GUARDRAIL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    worker: str
    pid: int
    rollout_sequence: int
    status: str
    guardrail: GuardrailState
    shadow: ShadowStats
    def __init__(self, worker: _Optional[str] = ..., pid: _Optional[int] = ..., rollout_sequence: _Optional[int] = ..., status: _Optional[str] = ..., guardrail: _Optional[_Union[GuardrailState, _Mapping]] = ..., shadow: _Optional[_Union[ShadowStats, _Mapping]] = ...) -> None: ...

class SetRolloutRequest(_message.Message):
    __slots__ = ("surface", "stage", "canary_share", "actor", "reason")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    surface: str
    stage: RolloutStage
    canary_share: float
    actor: str
    reason: str
    def __init__(self, surface: _Optional[str] = ..., stage: _Optional[_Union[RolloutStage, str]] = ..., canary_share: _Optional[float] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetRolloutResponse(_message.Message):
    __slots__ = ("stage", "canary_share", "change")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    stage: RolloutStage
    canary_share: float
    change: RolloutChange
    def __init__(self, stage: _Optional[_Union[RolloutStage, str]] = ..., canary_share: _Optional[float] = ..., change: _Optional[_Union[RolloutChange, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("surface", "exploration_cap", "configured_cap", "policy_version", "history", "baseline_version")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_CAP_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_CAP_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    surface: str
    exploration_cap: float
    configured_cap: float
    policy_version: str
    history: _containers.RepeatedCompositeFieldContainer[CapChange]
    baseline_version: str
    def __init__(self, surface: _Optional[str] = ..., exploration_cap: _Optional[float] = ..., configured_cap: _Optional[float] = ..., policy_version: _Optional[str] = ..., history: _Optional[_Iterable[_Union[CapChange, _Mapping]]] = ..., baseline_version: _Optional[str] = ...) -> None: ...

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
