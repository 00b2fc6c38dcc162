"""The online learner: joins outcomes to decisions inside their attribution window, learns off the request path.

Each served decision is tracked until its attribution window closes (``served_at + window``). Outcomes that
arrive in time add ``weight · value`` to the reward of the slate position of their item. When the window closes
the decision is learned with its logged propensities (an IPS cb label per served slot, see ``VWBandit.learn``)
and, every ``publish_every`` decisions, the learner's model is published to the registry as a new version and
handed to the serving policy. Outcomes for whole slates (empty ``item_id``) are logged but do not enter the
bandit's per-item reward: they belong to the slate-level (retention) model.

Decisions still open at shutdown are not learned (their outcomes may still come); they are in the log, which
offline training reads.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from logging_schema.rewards import RewardDefinition, UnknownOutcomeError
from recsys_rl.bandit import VWBandit
from recsys_rl.config import SurfaceConfig
from recsys_rl.errors import InvalidInput, NotFound
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.registry import Checkpoint, ModelRegistry

# How many closed decisions we remember, so a late outcome is told "not attributed" instead of NOT_FOUND.
_CLOSED_MEMORY = 500_000


@dataclass
class _Pending:
    event: events_pb2.DecisionEvent
    served_at_s: float
    deadline_s: float
    rewards: list[float]
    position_of: dict[str, int] = field(default_factory=dict)


@dataclass
class LearnerStats:
    tracked: int = 0
    learned_decisions: int = 0
    updates: int = 0
    attributed_outcomes: int = 0
    late_outcomes: int = 0
    published: int = 0
    learn_errors: int = 0


class OnlineLearner:
    """Tracks one surface's decisions, attributes outcomes, learns and publishes versions.

    ``track`` and ``attribute`` are called from gRPC threads; ``step`` (the learning) runs on the learner's own
    thread once ``start`` is called, or directly from tests.
    """

    def __init__(
        self,
        surface: SurfaceConfig,
        bandit: VWBandit,
        registry: ModelRegistry,
        *,
        parent_version: str,
        on_publish: Callable[[Checkpoint], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.surface = surface
        self.reward: RewardDefinition = surface.reward
        self._bandit = bandit
        self._registry = registry
        self._parent = parent_version
        self._on_publish = on_publish
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._order: deque[tuple[float, str]] = deque()  # windows are equal per surface: deadlines arrive in order
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._since_publish = 0
        self._data_range: dict[str, float | int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = LearnerStats()

    # --- called from request threads -------------------------------------------------------------------
    def track(self, event: events_pb2.DecisionEvent) -> None:
        served_at_s = event.served_at.seconds + event.served_at.nanos * 1e-9
        pending = _Pending(
            event=event,
            served_at_s=served_at_s,
            deadline_s=served_at_s + self.reward.attribution_window_seconds,
            rewards=[0.0] * len(event.slate),
            position_of={slot.item_id: slot.position for slot in event.slate},
        )
        with self._lock:
            self._pending[event.event_id] = pending
            self._order.append((pending.deadline_s, event.event_id))
            self.stats.tracked += 1

    def knows(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._pending or event_id in self._closed

    def check_outcome(self, item_id: str, outcome: str, value: float) -> float:
        """Validates an outcome against the reward definition; returns its weight."""
        if not math.isfinite(value):
            raise InvalidInput("value", f"must be finite, got {value}")
        try:
            return self.reward.weight(outcome)
        except UnknownOutcomeError as exc:
            raise InvalidInput("outcome", str(exc).split(": ", 1)[1]) from None

    def attribute(self, event_id: str, item_id: str, outcome: str, value: float, occurred_at_s: float) -> bool:
        """Adds an outcome to its decision's reward. True when it counts (inside the window, decision open)."""
        weight = self.check_outcome(item_id, outcome, value)
        with self._lock:
            pending = self._pending.get(event_id)
            if pending is None:
                if event_id in self._closed:
                    self.stats.late_outcomes += 1
                    return False
                raise NotFound(f"event_id: no decision {event_id!r} on surface {self.surface.name!r}")
            if item_id and item_id not in pending.position_of:
                raise InvalidInput("item_id", f"{item_id!r} was not in the slate of event {event_id}")
            if not self.reward.in_window(pending.served_at_s, occurred_at_s):
                self.stats.late_outcomes += 1
                return False
            if item_id:
                pending.rewards[pending.position_of[item_id]] += weight * value
            self.stats.attributed_outcomes += 1
            return True

    # --- the learning side ------------------------------------------------------------------------------
    def _close_due(self, now_s: float) -> list[_Pending]:
        due: list[_Pending] = []
        with self._lock:
            while self._order and self._order[0][0] < now_s:
                _, event_id = self._order.popleft()
                pending = self._pending.pop(event_id, None)
                if pending is not None:
                    due.append(pending)
                    self._closed[event_id] = None
            while len(self._closed) > _CLOSED_MEMORY:
                self._closed.popitem(last=False)
        return due

    def step(self, now_s: float | None = None) -> int:
        """Learns every decision whose window has closed by ``now_s``; publishes when due. Returns decisions learned."""
        due = self._close_due(self._clock() if now_s is None else now_s)
        if not self.surface.model.learn:
            return 0
        for pending in due:
            try:
                self.stats.updates += self._bandit.learn(pending.event, pending.rewards)
            except Exception:  # noqa: BLE001 - one bad record must not stop learning; it is counted
                self.stats.learn_errors += 1
                continue
            self.stats.learned_decisions += 1
            self._since_publish += 1
            first = self._data_range.get("first_served_at", pending.served_at_s)
            self._data_range = {
                "first_served_at": min(first, pending.served_at_s),
                "last_served_at": pending.served_at_s,
                "decisions": int(self._data_range.get("decisions", 0)) + 1,
            }
            if self._since_publish >= self.surface.model.publish_every:
                self.publish()
        return len(due)

    def publish(self) -> Checkpoint | None:
        """Publishes the learner's model as a new version (if it learned anything since the last one)."""
        if self._since_publish == 0:
            return None
        checkpoint = self._registry.publish(
            self.surface.name,
            self._bandit.to_bytes(),
            parent=self._parent,
            data_range=dict(self._data_range),
            parameters={"vw_args": self.surface.model.vw_args, "updates": self.stats.updates},
        )
        self._parent = checkpoint.version
        self._since_publish = 0
        self.stats.published += 1
        self._on_publish(checkpoint)
        return checkpoint

    def start(self, interval_s: float = 0.05) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.step()

        self._thread = threading.Thread(target=loop, name=f"learner-{self.surface.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread, learns what is due and publishes what was learned since the last version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.step()
        self.publish()
