"""Test events built with the generated protobuf classes."""

from __future__ import annotations

from recsys_rl.logging.v1.events_pb2 import DecisionEvent, LogRecord, OutcomeEvent
from recsys_rl.ranking.v1.ranking_service_pb2 import SERVING_MODE_LEARNED

BASE_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z in microseconds


def set_micros(timestamp: object, micros: int) -> None:
    timestamp.seconds, timestamp.nanos = divmod(micros, 1_000_000)  # type: ignore[attr-defined]
    timestamp.nanos *= 1_000  # type: ignore[attr-defined]


def make_decision(
    event_id: str,
    *,
    served_at_us: int = BASE_US,
    items: tuple[str, ...] = ("a", "b", "c"),
    n_candidates: int = 10,
    surface: str = "default",
) -> DecisionEvent:
    """A learned decision serving ``items`` (in order) out of ``n_candidates`` candidates."""
    event = DecisionEvent(
        event_id=event_id,
        request_id=f"req-{event_id}",
        surface=surface,
        user_id="u1",
        slate_size=len(items),
        policy_version="v7",
        serving_mode=SERVING_MODE_LEARNED,
        attribution_window_seconds=5.0,
    )
    set_micros(event.served_at, served_at_us)
    event.exploration.algorithm = "epsilon_greedy"
    event.exploration.epsilon = 0.1
    event.exploration.cap = 0.1
    event.context.numeric["hour"] = 13.0
    for i in range(n_candidates):
        candidate = event.candidates.add(item_id=f"cand-{i}", baseline_score=float(n_candidates - i))
        candidate.features.numeric["price"] = 1.0 + i
        candidate.features.categorical["topic"] = f"t{i % 4}"
    slate_propensity = 1.0
    for position, item in enumerate(items):
        propensity = 0.9 if position == 0 else 0.5
        slate_propensity *= propensity
        event.slate.add(item_id=item, position=position, propensity=propensity, score=1.0 - 0.1 * position,
                        explored=position > 0, candidate_index=position, exploration_mass=0.1, draw=0.25)
    event.slate_propensity = slate_propensity
    return event


def make_outcome(event_id: str, item_id: str, outcome: str, *, value: float = 1.0, occurred_at_us: int = BASE_US,
                 surface: str = "default", outcome_id: str = "") -> OutcomeEvent:
    event = OutcomeEvent(event_id=event_id, item_id=item_id, outcome=outcome, value=value, surface=surface,
                         outcome_id=outcome_id)
    set_micros(event.occurred_at, occurred_at_us)
    set_micros(event.received_at, occurred_at_us + 1_000)
    return event


def decision_record(event_id: str, **kwargs: object) -> LogRecord:
    return LogRecord(decision=make_decision(event_id, **kwargs))  # type: ignore[arg-type]


def outcome_record(event_id: str, item_id: str, outcome: str, **kwargs: object) -> LogRecord:
    return LogRecord(outcome=make_outcome(event_id, item_id, outcome, **kwargs))  # type: ignore[arg-type]
