"""OutcomeTracker's idempotency keys: first answers, remembered only once queued, kept past the window."""

from __future__ import annotations

import pytest

from logging_schema.rewards import RewardDefinition
from recsys_rl.config import SurfaceConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.serving.outcomes import MAX_OUTCOME_ID_BYTES, OutcomeAck, OutcomeTracker

SURFACE = SurfaceConfig(reward=RewardDefinition({"click": 1.0}, attribution_window_seconds=2.0))
T0 = 100_000_000  # µs


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_key_is_a_duplicate_only_once_remembered_and_keeps_its_first_answer() -> None:
    clock = Clock(100.0)
    tracker = OutcomeTracker(SURFACE, clock=clock)
    tracker.track("e1", T0, ["a", "b"])
    first = tracker.attribute("e1", "a", "click", 1.0, T0 + 3_000_000, "k")  # late: not attributed
    assert first == OutcomeAck(False)
    # Not remembered yet (say the log write failed): the retry is new, not a duplicate that would lose it.
    assert tracker.attribute("e1", "a", "click", 1.0, T0 + 3_000_000, "k") == OutcomeAck(False)
    tracker.remember("e1", "k", first.attributed)
    assert tracker.attribute("e1", "a", "click", 1.0, T0 + 1, "k") == OutcomeAck(False, duplicate=True)
    assert tracker.attribute("e1", "b", "click", 1.0, T0 + 1, "other") == OutcomeAck(True)
    tracker.remember("e1", "other", True)
    clock.now = 200.0
    tracker.track("e2", 200_000_000, ["c"])  # closes e1
    assert tracker.attribute("e1", "b", "click", 1.0, T0 + 1, "other") == OutcomeAck(True, duplicate=True)
    assert tracker.attribute("e1", "b", "click", 1.0, T0 + 1, "new") == OutcomeAck(False)  # closed: late
    assert tracker.attribute("e2", "c", "click", 1.0, 200_000_000) == OutcomeAck(True)  # no key: never a duplicate
    assert tracker.duplicates == 2


def test_outcome_id_length_is_limited_in_utf8_bytes() -> None:
    tracker = OutcomeTracker(SURFACE)
    tracker.track("e1", T0, ["a"])
    assert not tracker.attribute("e1", "a", "click", 1.0, T0, "k" * MAX_OUTCOME_ID_BYTES).duplicate
    with pytest.raises(InvalidInput, match="^outcome_id: must be at most 256 bytes"):
        tracker.attribute("e1", "a", "click", 1.0, T0, "ü" * (MAX_OUTCOME_ID_BYTES // 2 + 1))
