"""LearnerSupervisor's restart policy: an ERROR line per death, backoff doubling to its cap, reset after a healthy
run, and no restart once stopping. The learner here is a stand-in whose death the test controls; the real
process is killed in tests/ranker/test_learner_faults.py."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from recsys_rl.serving.supervisor import LearnerSupervisor


class _Learner:
    """Ends when ``die()`` is called, like a learner process that was killed."""

    def __init__(self, resume_after_s: float | None) -> None:
        self.resume_after_s = resume_after_s
        self.started_at = time.monotonic()
        self.pid = None
        self._ended = threading.Event()
        self.stopped = False

    def die(self) -> None:
        self._ended.set()

    def join(self, timeout_s: float) -> bool:
        return self._ended.wait(timeout_s)

    def describe_exit(self) -> str:
        return "was killed by SIGKILL"

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped = True
        self._ended.set()


def _wait_for(condition, timeout_s: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_restarts_with_doubling_backoff_resumes_and_stops_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    started: list[_Learner] = []

    def start(resume_after_s: float | None) -> _Learner:
        started.append(_Learner(resume_after_s))
        return started[-1]

    with caplog.at_level(logging.ERROR):
        supervisor = LearnerSupervisor(start, first_backoff_s=0.1, max_backoff_s=0.4, healthy_after_s=60)
        try:
            for n in range(1, 5):
                started[-1].die()
                _wait_for(lambda: len(started) == n + 1)  # noqa: B023
            gaps = [b.started_at - a.started_at for a, b in zip(started, started[1:])]
            # Backoff 0.1, 0.2, 0.4, 0.4 (capped): each gap is at least its backoff.
            assert [round(g, 1) >= want for g, want in zip(gaps, (0.1, 0.2, 0.4, 0.4))] == [True] * 4, gaps
            assert gaps[1] > 1.5 * gaps[0] - 0.05
            assert started[0].resume_after_s is None
            assert all(s.resume_after_s is not None for s in started[1:])  # restarts resume
            assert supervisor.restarts == 4
        finally:
            supervisor.stop()
    assert started[-1].stopped and len(started) == 5
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4 and all("SIGKILL" in e and "keep serving" in e for e in errors)


def test_backoff_resets_after_a_healthy_run_and_no_restart_after_stop() -> None:
    started: list[_Learner] = []

    def start(resume_after_s: float | None) -> _Learner:
        started.append(_Learner(resume_after_s))
        return started[-1]

    supervisor = LearnerSupervisor(start, first_backoff_s=0.5, max_backoff_s=5.0, healthy_after_s=0.3)
    try:
        time.sleep(0.35)  # a healthy run
        started[-1].die()
        _wait_for(lambda: len(started) == 2)
        time.sleep(0.35)  # healthy again: the next backoff is 0.5 s again, not the doubled 1 s
        died_at = time.monotonic()
        started[-1].die()
        _wait_for(lambda: len(started) == 3)
        assert 0.5 <= started[2].started_at - died_at < 0.9
        supervisor.stop()
        started[-1].die()
        time.sleep(0.7)  # longer than the backoff: a restart would have happened by now
        assert len(started) == 3
    finally:
        supervisor.stop()


def test_a_restarted_learner_resumes_after_the_last_published_decision(tmp_path) -> None:  # noqa: ANN001
    """What the dead learner learned but never published is learned again; what it published is not."""
    from logging_schema.reader import read_log
    from logging_schema.rewards import RewardDefinition
    from recsys_rl.config import ModelConfig, ServiceConfig, SurfaceConfig
    from recsys_rl.logging.v1 import events_pb2
    from recsys_rl.serving.bandit import VWBandit
    from recsys_rl.serving.learner import OnlineLearner, run_learner
    from recsys_rl.serving.registry import ModelRegistry
    from recsys_rl.serving.service import DecisionService
    from tests.helpers import make_request

    surface = SurfaceConfig(reward=RewardDefinition(attribution_window_seconds=0.01),
                            model=ModelConfig(publish_every=10_000))
    config = ServiceConfig({"default": surface})
    service = DecisionService(config, tmp_path, learner="off", watch_models=False)
    fresh = service.policy_version("default")
    for i in range(12):
        service.rank(make_request(request_id=f"r{i}"))
    service.close()
    decisions = read_log(tmp_path / "logs").decisions
    # The learner that "died" had published a version holding the first 5 decisions.
    registry = ModelRegistry(tmp_path / "models")
    dead = OnlineLearner(surface, VWBandit(surface.model.vw_args), registry, parent_version=fresh)
    for event in decisions[:5]:
        dead.consume(events_pb2.LogRecord(decision=event))
    due = max(e.served_at.ToNanoseconds() for e in decisions) * 1e-9 + 0.01 + 1.0  # window + grace
    assert dead.step(due + 1) == 5
    published = dead.publish(force=True)
    assert published is not None
    _wait_for(lambda: time.time() > due, timeout_s=5)  # every decision's window (and grace) has closed

    stop = threading.Event()
    stop.set()  # one pass: read the log, learn what is due, publish, return
    run_learner(config, tmp_path, stop, resume_after_s=0.0)
    resumed = registry.latest("default")
    assert resumed is not None and resumed.manifest["parent"] == published.version
    assert resumed.manifest["data_range"]["decisions"] == 7  # decisions 6..12, none of the first 5 twice
    assert resumed.manifest["data_range"]["first_served_at"] > published.manifest["data_range"]["last_served_at"]
