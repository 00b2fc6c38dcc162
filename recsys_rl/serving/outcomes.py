"""Outcome attribution on the serving side: which decisions may still get outcomes, and which were seen.

``OutcomeTracker`` remembers each decision's slate and attribution window, so ReportOutcome can say NOT_FOUND,
reject an item that was not served, and tell whether the outcome counts (``RewardDefinition.in_window``, integer
microseconds, the rule the offline join uses). It also remembers the idempotency keys (``outcome_id``) it has
acknowledged per decision, with the first answer, so a retried ReportOutcome is acknowledged again without being
counted or logged twice. Keys are remembered only once the outcome is in the log writer's queue
(``remember``): a retry after a failed write is counted exactly once, never zero times.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from logging_schema.rewards import DecisionRewards, OutcomeValueError, RewardDefinition, UnknownOutcomeError
from recsys_rl.config import SurfaceConfig
from recsys_rl.errors import InvalidInput, NotFound

# How many closed decisions the tracker remembers, so a late outcome is "not attributed" rather than NOT_FOUND.
_CLOSED_MEMORY = 500_000
# Longest accepted idempotency key, in UTF-8 bytes: a key is stored per decision until it closes.
MAX_OUTCOME_ID_BYTES = 256


def outcome_weight(reward: RewardDefinition, outcome: str, value: float) -> float:
    """Validates an outcome against a reward definition (name, finiteness, range); returns its weight."""
    if not math.isfinite(value):
        raise InvalidInput("value", f"must be finite, got {value}")
    try:
        return reward.check_value(outcome, value)
    except UnknownOutcomeError as exc:
        raise InvalidInput("outcome", str(exc).split(": ", 1)[1]) from None
    except OutcomeValueError as exc:
        raise InvalidInput("value", str(exc).split(": ", 1)[1]) from None


def check_outcome_id(outcome_id: str) -> None:
    if len(outcome_id.encode("utf-8", "surrogatepass")) > MAX_OUTCOME_ID_BYTES:
        raise InvalidInput("outcome_id", f"must be at most {MAX_OUTCOME_ID_BYTES} bytes (UTF-8), "
                                         f"got {len(outcome_id.encode('utf-8', 'surrogatepass'))}")


def decision_reward(rewards: DecisionRewards) -> float:
    """One decision's reward for the canary's guardrail: the mean slot reward under the reward rule.

    The same per-slot rewards the learner learns from (``DecisionRewards``); their mean stays inside the declared
    range [low, high]. Whole-slate outcomes are not in it: they belong to the slate-level model, as in learning.
    """
    slots = rewards.slot_rewards()
    return sum(slots) / len(slots) if slots else 0.0


@dataclass(frozen=True)
class OutcomeAck:
    """ReportOutcome's answer: whether the outcome counts, and whether it repeats an acknowledged outcome_id."""

    attributed: bool
    duplicate: bool = False


class _Tracked:
    """One open decision. A plain slotted class: one is built per Rank (a dataclass with a default factory costs
    a few µs more there)."""

    __slots__ = ("served_at_us", "deadline_s", "slate", "request", "seen", "rewards", "reward_tag", "user_id")

    def __init__(self, served_at_us: int, deadline_s: float, slate: list[str], request: object | None,
                 user_id: str = "") -> None:
        self.served_at_us = served_at_us
        self.deadline_s = deadline_s
        self.slate = slate  # the served item ids (a few): ReportOutcome asks only whether an item is among them
        self.request = request  # the RankRequest, kept only when a long-term model observes clicks
        self.seen: dict[str, bool] = {}  # outcome_id -> the first answer's ``attributed``
        # Only for decisions someone watches (the canary's guardrail): the reward rule applied as outcomes arrive.
        self.rewards: DecisionRewards | None = None
        self.reward_tag: object | None = None
        self.user_id = user_id  # kept on retrieval surfaces: a click updates this user's kept query (retrieval/users.py)


class OutcomeTracker:
    """Decisions of one surface whose outcomes may still arrive. Thread-safe (called from gRPC threads)."""

    def __init__(self, surface: SurfaceConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.surface = surface
        self.reward = surface.reward
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, _Tracked] = {}
        self._order: deque[tuple[float, str]] = deque()  # one window per surface: deadlines arrive in order
        # Closed decisions keep their seen ids (usually none), so a retry just after the window still gets the
        # first answer rather than being logged again as "late".
        self._closed: OrderedDict[str, dict[str, bool]] = OrderedDict()
        # (reward_tag, reward) of watched decisions whose windows closed, until drain_closed_rewards() takes them.
        self._closed_rewards: deque[tuple[object, float]] = deque()
        self.attributed = 0
        self.late = 0
        self.duplicates = 0

    def track(self, event_id: str, served_at_us: int, slate_item_ids: list[str], *,
              request: object | None = None, reward_tag: object | None = None, user_id: str = "") -> None:
        """Starts tracking a decision served at ``served_at_us`` (integer µs, as its DecisionEvent logs it).

        ``reward_tag`` (not None): also compute the decision's reward (``decision_reward``) and hand it out with
        the tag through ``drain_closed_rewards`` once the window closes.
        """
        deadline_s = (served_at_us + self.reward.window_us) / 1e6
        tracked = _Tracked(served_at_us, deadline_s, slate_item_ids, request, user_id)
        if reward_tag is not None:
            tracked.rewards = DecisionRewards(self.reward, served_at_us, slate_item_ids)
            tracked.reward_tag = reward_tag
        with self._lock:
            self._open[event_id] = tracked
            self._order.append((deadline_s, event_id))
            self._expire(self._clock())

    def _expire(self, now_s: float) -> None:
        while self._order and self._order[0][0] < now_s:
            _, event_id = self._order.popleft()
            tracked = self._open.pop(event_id, None)
            if tracked is not None:
                self._closed[event_id] = tracked.seen
                if tracked.rewards is not None:
                    self._closed_rewards.append((tracked.reward_tag, decision_reward(tracked.rewards)))
        while len(self._closed) > _CLOSED_MEMORY:
            self._closed.popitem(last=False)

    def expire(self) -> None:
        """Closes the windows that are over now (``track`` does it too, but traffic may stop)."""
        with self._lock:
            self._expire(self._clock())

    def drain_closed_rewards(self) -> list[tuple[object, float]]:
        """(reward_tag, reward) of the watched decisions closed since the last call, in closing order."""
        with self._lock:
            drained = list(self._closed_rewards)
            self._closed_rewards.clear()
            return drained

    def count_reward(self, event_id: str, item_id: str, outcome: str, value: float, occurred_at_us: int,
                     outcome_id: str = "") -> None:
        """Adds an acknowledged (queued) outcome to a watched decision's reward. No-op for others."""
        with self._lock:
            tracked = self._open.get(event_id)
            if tracked is not None and tracked.rewards is not None:
                tracked.rewards.add(item_id, outcome, value, occurred_at_us, outcome_id)

    def request_of(self, event_id: str) -> object | None:
        """The tracked RankRequest of an open decision (None when not kept or already closed)."""
        with self._lock:
            tracked = self._open.get(event_id)
            return tracked.request if tracked is not None else None

    def user_of(self, event_id: str) -> str:
        """The user_id of an open decision when it was kept (``track(user_id=...)``), "" otherwise."""
        with self._lock:
            tracked = self._open.get(event_id)
            return tracked.user_id if tracked is not None else ""

    def knows(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._open or event_id in self._closed

    def attribute(self, event_id: str, item_id: str, outcome: str, value: float, occurred_at_us: int,
                  outcome_id: str = "") -> OutcomeAck:
        """Whether the outcome counts toward its decision (served item or whole slate, inside the window).

        A repeated ``outcome_id`` of the decision returns the first answer with ``duplicate=True``; the caller
        then neither logs nor counts it. A new one is not remembered until the caller calls ``remember``.
        """
        outcome_weight(self.reward, outcome, value)
        check_outcome_id(outcome_id)
        with self._lock:
            tracked = self._open.get(event_id)
            seen = tracked.seen if tracked is not None else self._closed.get(event_id)
            if seen is None and event_id not in self._closed:
                raise NotFound(f"event_id: no decision {event_id!r} on surface {self.surface.name!r}")
            if outcome_id and seen and outcome_id in seen:
                self.duplicates += 1
                return OutcomeAck(seen[outcome_id], duplicate=True)
            if tracked is None:
                self.late += 1
                return OutcomeAck(False)
            if item_id and item_id not in tracked.slate:
                raise InvalidInput("item_id", f"{item_id!r} was not in the slate of event {event_id}")
            if not self.reward.in_window(tracked.served_at_us, occurred_at_us):
                self.late += 1
                return OutcomeAck(False)
            self.attributed += 1
            return OutcomeAck(True)

    def remember(self, event_id: str, outcome_id: str, attributed: bool) -> None:
        """Records an acknowledged (queued) outcome's id, so its repeats are duplicates. No-op without an id."""
        if not outcome_id:
            return
        with self._lock:
            tracked = self._open.get(event_id)
            seen = tracked.seen if tracked is not None else self._closed.get(event_id)
            if seen is not None:
                seen.setdefault(outcome_id, attributed)
