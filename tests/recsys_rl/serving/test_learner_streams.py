"""The online learner follows every worker's log stream: streams there when it started (from their end), streams
created after it started (from their start), and outcomes joined to decisions whichever stream holds them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from logging_schema.rewards import RewardDefinition
from logging_schema.segments import stream_dir
from logging_schema.tail import LogTailer
from logging_schema.writer import LogWriter
from recsys_rl.config import ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.learner import LearnerHandle, OnlineLearner, learn_from_log
from recsys_rl.serving.policy import SurfacePolicy, decision_to_event
from recsys_rl.serving.registry import ModelRegistry
from tests.helpers import make_request

SURFACE = SurfaceConfig(reward=RewardDefinition({"click": 1.0}, attribution_window_seconds=0.01),
                        model=ModelConfig(publish_every=1))


def _policy(registry: ModelRegistry) -> SurfacePolicy:
    start = registry.publish("default", VWBandit(SURFACE.model.vw_args).to_bytes(), parent=None, data_range={},
                             parameters={})
    return SurfacePolicy(SURFACE, VWBandit(SURFACE.model.vw_args, model=start.model), start.version, server_seed=1)


def _decision(policy: SurfacePolicy, event_id: str) -> events_pb2.LogRecord:
    request = make_request(n=6, slate_size=2, request_id=event_id)
    event = decision_to_event(request, policy.rank(request), event_id=event_id, served_at_ns=time.time_ns(),
                              window_s=0.01, latency_us=0)
    return events_pb2.LogRecord(decision=event)


def _learned(registry: ModelRegistry) -> int:
    """Decisions the newest published version has learned since the learner started (0 before its first)."""
    latest = registry.latest("default")
    return int(latest.manifest["data_range"].get("decisions", 0)) if latest is not None else 0


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_thread_learner_learns_every_stream_including_one_created_after_it_started(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    policy = _policy(registry)
    logs = tmp_path / "logs"
    w0, w1 = LogWriter(stream_dir(logs, 0)), LogWriter(stream_dir(logs, 1))
    learner = None
    try:
        old_served_at = 0.0
        for writer, name in ((w0, "old-0"), (w1, "old-1")):  # there before the learner: not learned online
            old = _decision(policy, name)
            old_served_at = max(old_served_at, old.decision.served_at.ToNanoseconds() / 1e9)
            writer.submit(old)
            assert writer.flush(5.0)
        learner = LearnerHandle("thread", ServiceConfig({"default": SURFACE}), tmp_path)
        # Probe until the learner demonstrably follows worker-0 (a probe logged before its tailer started is, like
        # the old decisions, behind its starting point; each learned one is published: publish_every=1).
        probes = 0
        while _learned(registry) == 0:
            assert probes < 20, "the learner never learned a probe decision"
            w0.submit(_decision(policy, f"probe-{probes}"))
            assert w0.flush(5.0)
            probes += 1
            _wait_for(lambda: _learned(registry) > 0, timeout_s=2.5)  # the window (10 ms) + the learner's grace (1 s)
        before = _learned(registry)
        with LogWriter(stream_dir(logs, 2)) as w2:  # a worker started after the learner
            w2.submit(_decision(policy, "late-0"))
            w1.submit(_decision(policy, "w1-0"))
            w2.submit(_decision(policy, "late-1"))
            w0.submit(_decision(policy, "w0-0"))
        assert w0.flush(5.0) and w1.flush(5.0)
        assert _wait_for(lambda: _learned(registry) == before + 4, timeout_s=15.0), _learned(registry)
    finally:
        if learner is not None:
            learner.stop(timeout_s=10.0)
        w0.close(), w1.close()
    assert learner.describe_exit() == "ended"
    assert _learned(registry) == before + 4  # nothing twice
    assert registry.latest("default").manifest["data_range"]["first_served_at"] > old_served_at  # the old ones never


def test_an_outcome_in_another_stream_is_joined_even_when_read_before_its_decision(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    policy = _policy(registry)
    learner = OnlineLearner(SURFACE, VWBandit(SURFACE.model.vw_args), registry,
                            parent_version=registry.latest_version("default"))
    tailer = LogTailer(tmp_path / "logs")
    decision = _decision(policy, "e1")
    clicked = decision.decision.slate[1].item_id
    outcome = events_pb2.OutcomeEvent(event_id="e1", item_id=clicked, outcome="click", value=1.0, surface="default",
                                      attributed=True)
    outcome.occurred_at.CopyFrom(decision.decision.served_at)
    outcome.received_at.GetCurrentTime()
    # The outcome's stream is written (and read) first: the decision's writer is behind.
    with LogWriter(stream_dir(tmp_path / "logs", 1)) as writer:
        writer.submit(events_pb2.LogRecord(outcome=outcome))
    assert learn_from_log({"default": learner}, tailer.poll(), time.time()) == 0
    assert learner.stats.outcomes_used == 0
    with LogWriter(stream_dir(tmp_path / "logs", 0)) as writer:
        writer.submit(decision)
    assert learn_from_log({"default": learner}, tailer.poll(), time.time()) == 0  # its window is still open
    assert learner.stats.outcomes_used == 1 and learner.stats.decisions_seen == 1
    due = decision.decision.served_at.ToNanoseconds() / 1e9 + 0.01 + 1.0
    assert learner.step(due + 0.1) == 1 and learner.stats.updates == 2
    # An outcome whose decision never comes is dropped once it has waited long enough.
    orphan = events_pb2.OutcomeEvent(event_id="never", item_id="a", outcome="click", value=1.0, surface="default")
    orphan.received_at.GetCurrentTime()
    learner.consume(events_pb2.LogRecord(outcome=orphan))
    learner.step(time.time() + 60.0)
    learner.consume(events_pb2.LogRecord(decision=_decision(policy, "never").decision))
    assert learner.stats.outcomes_used == 1
