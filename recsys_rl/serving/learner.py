"""The online learner that reads the log and publishes models (outcome attribution lives in ``outcomes``).

Learner (its own process, ``run_learner``; a thread in tests): ``OnlineLearner`` follows the log the server writes
(``logging_schema.tail``), applies the surface's reward rule to each decision's outcomes (``DecisionRewards``:
duplicates by outcome_id once, the attribution window in microseconds, max/sum aggregation, the reward range -
the same rule as the offline join), and once a decision's window has closed (plus a grace period for outcomes
still in the writer's queue) learns it with its logged propensities: one IPS cb label per served slot
(``VWBandit.learn``). Every ``publish_every`` decisions it publishes a version to the registry; serving processes
pick it up (``ModelWatcher``) and hot-swap. Whole-slate outcomes (empty ``item_id``) are logged but not in the
bandit's per-item reward: they belong to the slate-level (retention) model. Learning off the serving process
keeps VW's GIL-holding updates off Rank's path.

Restart: the learner starts at the end of the existing log; decisions whose windows were still open at shutdown
are not learned online (their outcomes may come later); offline training reads them from the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from logging_schema.rewards import DecisionRewards, micros
from logging_schema.tail import LogTailer
from recsys_rl.config import ServiceConfig, SurfaceConfig
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.serving.outcomes import OutcomeTracker, outcome_weight  # noqa: F401 - moved there; old import path
from recsys_rl.serving.registry import Checkpoint, ModelRegistry

log = logging.getLogger(__name__)

# Outcomes accepted just before a window closes may reach the log a little later (the writer's queue).
_GRACE_S = 1.0


def _seconds(ts: object) -> float:
    return ts.seconds + ts.nanos * 1e-9  # type: ignore[attr-defined]


@dataclass
class _Pending:
    event: events_pb2.DecisionEvent
    rewards: DecisionRewards


def _occurred_at_us(outcome: events_pb2.OutcomeEvent) -> int | None:
    """When the outcome happened, as the offline join reads it: occurred_at, else received_at, else unknown."""
    if outcome.HasField("occurred_at"):
        return micros(outcome.occurred_at.seconds, outcome.occurred_at.nanos)
    if outcome.HasField("received_at"):
        return micros(outcome.received_at.seconds, outcome.received_at.nanos)
    return None


@dataclass
class LearnerStats:
    decisions_seen: int = 0
    learned_decisions: int = 0
    updates: int = 0
    outcomes_used: int = 0
    published: int = 0
    learn_errors: int = 0


class OnlineLearner:
    """Learns one surface from its log records. Single-threaded: ``consume`` then ``step``, in a loop."""

    def __init__(self, surface: SurfaceConfig, bandit: object, registry: ModelRegistry, *, parent_version: str,
                 on_publish: Callable[[Checkpoint], None] = lambda _: None) -> None:
        self.surface = surface
        self._bandit = bandit  # a VWBandit (typed loosely so this module imports without VW)
        self._registry = registry
        self._parent = parent_version
        self._on_publish = on_publish
        self._pending: dict[str, _Pending] = {}
        self._order: deque[tuple[float, str]] = deque()
        self._since_publish = 0
        self._data_range: dict[str, float | int] = {}
        self.stats = LearnerStats()

    def consume(self, record: events_pb2.LogRecord) -> None:
        kind = record.WhichOneof("event")
        if kind == "decision":
            event = record.decision
            due = _seconds(event.served_at) + self.surface.reward.attribution_window_seconds + _GRACE_S
            rewards = DecisionRewards(self.surface.reward, micros(event.served_at.seconds, event.served_at.nanos),
                                      [slot.item_id for slot in event.slate])
            self._pending[event.event_id] = _Pending(event, rewards)
            self._order.append((due, event.event_id))
            self.stats.decisions_seen += 1
        elif kind == "outcome":
            outcome = record.outcome
            pending = self._pending.get(outcome.event_id)
            if pending is None:
                return
            # Every outcome of the decision goes through the rule (whole-slate ones too: they may share an
            # outcome_id with an item's outcome, and only the first of a key counts).
            counted = pending.rewards.add(outcome.item_id, outcome.outcome, outcome.value, _occurred_at_us(outcome),
                                          outcome.outcome_id)
            if counted and outcome.item_id:
                self.stats.outcomes_used += 1

    def step(self, now_s: float) -> int:
        """Learns every decision whose window (plus grace) closed before ``now_s``; publishes when due."""
        learned = 0
        while self._order and self._order[0][0] < now_s:
            _, event_id = self._order.popleft()
            pending = self._pending.pop(event_id, None)
            if pending is None or not self.surface.model.learn:
                continue
            try:
                rewards = pending.rewards.slot_rewards()
                self.stats.updates += self._bandit.learn(pending.event, rewards)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - one bad record must not stop learning; it is counted and logged
                log.exception("could not learn decision %s", event_id)
                self.stats.learn_errors += 1
                continue
            learned += 1
            self.stats.learned_decisions += 1
            self._since_publish += 1
            served = _seconds(pending.event.served_at)
            self._data_range = {
                "first_served_at": min(self._data_range.get("first_served_at", served), served),
                "last_served_at": served,
                "decisions": int(self._data_range.get("decisions", 0)) + 1,
            }
            if self._since_publish >= self.surface.model.publish_every:
                self.publish()
        return learned

    def publish(self) -> Checkpoint | None:
        """Publishes the model as a new version if it learned anything since the last one."""
        if self._since_publish == 0:
            return None
        checkpoint = self._registry.publish(
            self.surface.name,
            self._bandit.to_bytes(),  # type: ignore[attr-defined]
            parent=self._parent,
            data_range=dict(self._data_range),
            parameters={"vw_args": self.surface.model.vw_args, "updates": self.stats.updates,
                        "exploration": self.surface.exploration.algorithm},
        )
        self._parent = checkpoint.version
        self._since_publish = 0
        self.stats.published += 1
        self._on_publish(checkpoint)
        return checkpoint


def build_learners(config: ServiceConfig, registry: ModelRegistry) -> dict[str, OnlineLearner]:
    """One learner per learning surface, starting from the surface's latest published version."""
    from recsys_rl.serving.bandit import VWBandit

    learners: dict[str, OnlineLearner] = {}
    for name, surface in config.surfaces.items():
        checkpoint = registry.latest(name)
        if checkpoint is None or not surface.model.learn:
            continue
        bandit = VWBandit(surface.model.vw_args, model=checkpoint.model)
        learners[name] = OnlineLearner(surface, bandit, registry, parent_version=checkpoint.version)
    return learners


def learn_from_log(learners: dict[str, OnlineLearner], records: Iterable[events_pb2.LogRecord], now_s: float) -> int:
    for record in records:
        kind = record.WhichOneof("event")
        surface = record.decision.surface if kind == "decision" else record.outcome.surface
        learner = learners.get(surface)
        if learner is not None:
            learner.consume(record)
    return sum(learner.step(now_s) for learner in learners.values())


def run_learner(config: ServiceConfig, data_dir: Path, stop: threading.Event | object, *,
                interval_s: float = 0.1, from_end: bool = True) -> None:
    """The learner loop (target of the learner process or thread). ``stop`` is a threading/multiprocessing Event.

    On stop it reads what the server flushed, learns what is due and publishes the rest, then returns.
    """
    registry = ModelRegistry(Path(data_dir) / "models")
    learners = build_learners(config, registry)
    tailer = LogTailer(Path(data_dir) / "logs", from_end=from_end)
    while not stop.wait(interval_s):  # type: ignore[attr-defined]
        learn_from_log(learners, tailer.poll(), time.time())
    learn_from_log(learners, tailer.poll(max_records=10**9), time.time())
    for learner in learners.values():
        learner.publish()


def learner_process_main(config: ServiceConfig, data_dir: Path, stop: object, parent_pid: int) -> None:
    """Entry point of the learner process: the server coordinates shutdown, so signals are its business."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    class _StopOrOrphaned:
        def wait(self, timeout: float) -> bool:
            # A learner whose server died without stopping it must not linger.
            return stop.wait(timeout) or os.getppid() != parent_pid  # type: ignore[attr-defined]

    run_learner(config, data_dir, _StopOrOrphaned())


class LearnerHandle:
    """The running learner: a spawned process (production) or a thread (tests, one process to debug)."""

    def __init__(self, mode: str, config: ServiceConfig, data_dir: Path) -> None:
        import multiprocessing
        import os

        self._process: multiprocessing.process.BaseProcess | None = None
        self._thread: threading.Thread | None = None
        if mode == "process":
            # spawn, not fork: the server process already runs gRPC and writer threads.
            context = multiprocessing.get_context("spawn")
            self._stop: object = context.Event()
            self._process = context.Process(target=learner_process_main, name="recsys-rl-learner", daemon=True,
                                            args=(config, Path(data_dir), self._stop, os.getpid()))
            self._process.start()
        elif mode == "thread":
            self._stop = threading.Event()
            self._thread = threading.Thread(target=run_learner, args=(config, Path(data_dir), self._stop),
                                            name="learner", daemon=True)
            self._thread.start()
        else:
            raise ValueError(f"learner: must be 'process', 'thread' or 'off', got {mode!r}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Lets the learner read what the log writer flushed, learn what is due, publish, and exit."""
        self._stop.set()  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._process is not None:
            self._process.join(timeout_s)
            if self._process.is_alive():
                log.error("learner did not stop within %.0f s; terminating it", timeout_s)
                self._process.terminate()


class ModelWatcher:
    """Serving side: polls the registry and hot-swaps a surface's model when a newer version is published."""

    def __init__(self, refresh: Callable[[], None], *, interval_s: float = 0.25) -> None:
        self._refresh = refresh
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - a bad checkpoint is refused; the old model keeps serving
                log.exception("model refresh failed; the current version keeps serving")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
