"""Outcome attribution (serving side) and the online learner (log side), driven step by step."""

from __future__ import annotations

from pathlib import Path

import pytest

from logging_schema.rewards import RewardDefinition
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.config import ModelConfig, SurfaceConfig
from recsys_rl.errors import InvalidInput, NotFound
from recsys_rl.serving.learner import OnlineLearner
from recsys_rl.serving.outcomes import OutcomeTracker
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.serving.policy import SurfacePolicy, decision_to_event
from recsys_rl.serving.registry import ModelRegistry
from tests.helpers import make_request

SURFACE = SurfaceConfig(reward=RewardDefinition({"click": 1.0, "purchase": 5.0}, attribution_window_seconds=2.0),
                        model=ModelConfig(publish_every=3))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_tracker_attributes_inside_the_window_only() -> None:
    clock = Clock(100.0)
    tracker = OutcomeTracker(SURFACE, clock=clock)
    tracker.track("e1", 100_000_000, ["a", "b"])
    assert tracker.attribute("e1", "a", "click", 1.0, 101_000_000).attributed
    assert tracker.attribute("e1", "", "purchase", 1.0, 102_000_000).attributed  # whole slate, window end inclusive
    assert not tracker.attribute("e1", "b", "click", 1.0, 102_000_001).attributed  # 1 µs after the window
    with pytest.raises(InvalidInput, match="^item_id"):
        tracker.attribute("e1", "zzz", "click", 1.0, 101_000_000)
    with pytest.raises(InvalidInput, match="^outcome"):
        tracker.attribute("e1", "a", "like", 1.0, 101_000_000)
    with pytest.raises(NotFound, match="event_id"):
        tracker.attribute("nope", "a", "click", 1.0, 101_000_000)
    clock.now = 200.0
    tracker.track("e2", 200_000_000, ["c"])  # expires e1
    assert tracker.knows("e1")
    assert not tracker.attribute("e1", "a", "click", 1.0, 101_000_000).attributed  # closed: known, but late


def _served(policy: SurfacePolicy, i: int, served_at_s: float) -> events_pb2.DecisionEvent:
    request = make_request(n=6, slate_size=2, request_id=f"r{i}")
    decision = policy.rank(request)
    return decision_to_event(request, decision, event_id=f"e{i}", served_at_ns=int(served_at_s * 1e9),
                             window_s=2.0, latency_us=0)


def test_learner_waits_for_the_window_then_learns_and_publishes(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    start = registry.publish("default", VWBandit(SURFACE.model.vw_args).to_bytes(), parent=None, data_range={},
                             parameters={})
    policy = SurfacePolicy(SURFACE, VWBandit(SURFACE.model.vw_args, model=start.model), start.version,
                           server_seed=1)
    published = []
    learner = OnlineLearner(SURFACE, VWBandit(SURFACE.model.vw_args, model=start.model), registry,
                            parent_version=start.version, on_publish=published.append)
    events = [_served(policy, i, 1000.0 + i) for i in range(4)]
    for event in events:
        learner.consume(events_pb2.LogRecord(decision=event))
    clicked = events[0].slate[1].item_id
    in_time = events_pb2.OutcomeEvent(event_id="e0", item_id=clicked, outcome="click", value=1.0, attributed=True,
                                      surface="default")
    in_time.occurred_at.FromSeconds(1001)
    learner.consume(events_pb2.LogRecord(outcome=in_time))
    # After the window (the server said not attributed): must not count.
    late = events_pb2.OutcomeEvent(event_id="e0", item_id=events[0].slate[0].item_id, outcome="click", value=1.0,
                                   attributed=False)
    late.occurred_at.FromSeconds(1003)
    learner.consume(events_pb2.LogRecord(outcome=late))
    assert learner.step(1002.0) == 0  # e0's window (2 s) plus grace (1 s) is still open
    assert learner.stats.outcomes_used == 1
    assert learner.step(1005.5) == 3  # e0, e1, e2 are due
    assert learner.stats.updates == 6  # one update per served slot
    assert len(published) == 1 and published[0].manifest["parent"] == start.version
    assert published[0].manifest["data_range"]["decisions"] == 3
    assert learner.step(1010.0) == 1
    assert learner.publish() is not None and learner.publish() is None  # nothing new the second time
    assert registry.latest_version("default") == registry.versions("default")[-1]
