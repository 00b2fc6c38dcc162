"""Reward definitions: which outcomes count, with what weight and aggregation, inside which window, in which range.

This module is the one definition of the reward rule. Online attribution (``recsys_rl.serving.outcomes``), the
online learner (``recsys_rl.serving.learner``) and the offline join (``logging_schema.tables.join_rewards``, used
by ``logs export``, replay and the gate) all follow it; the join restates it as polars expressions, and tests
check both give the same rewards on the same log.

The rule, for one decision served at ``served_at`` (microseconds since the epoch, as logged):

1. Duplicates: of the outcomes sharing (event_id, outcome_id) with a non-empty ``outcome_id``, only the first in
   log order counts (whatever its item, name, value or time). Outcomes without an id are never duplicates.
2. Attribution: an outcome counts when ``served_at ≤ occurred_at ≤ served_at + window_us`` (integer
   microseconds, inclusive at both ends; ``window_us = round(attribution_window_seconds · 1e6)``) and its name is
   in ``weights``. ``occurred_at`` is the host's time, or the server's receive time when the host sent none.
3. Aggregation, per (item, outcome name): ``max`` (the largest reported value: a click reported three times
   counts once) or ``sum`` (dwell seconds reported in pieces add up). Default ``max`` for every outcome.
4. reward(item) = clip(Σ_outcome weight · aggregated value, range); whole-slate outcomes (empty item) form the
   slate reward by the same rule. No outcome means 0, so 0 must lie in the range.

Range: ``range = (low, high)`` bounds every aggregated reward, so learning and the evaluators' bounded-reward
intervals can rely on it. Unset, it is derived as if every aggregated value lay in [0, 1] (0/1 outcomes):
``(Σ min(0, w), Σ max(0, w))``, e.g. [0, 1] for the default ``click = 1``; a definition with a weighted ``sum``
outcome has no such bound and must declare its range. An outcome whose ``weight · value`` alone lies outside
the range is refused at ReportOutcome (INVALID_ARGUMENT naming ``value``); sums of outcomes that each fit are
clipped. Outcomes already in a log (written before the check, or by another configuration) are clipped too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

AGGREGATIONS = ("max", "sum")
DEFAULT_AGGREGATION = "max"


class UnknownOutcomeError(ValueError):
    """An outcome name that the surface's reward definition does not list."""


class OutcomeValueError(ValueError):
    """An outcome value that cannot fit the reward range on its own."""


def micros(seconds: int, nanos: int) -> int:
    """A protobuf Timestamp's (seconds, nanos) as integer microseconds: the one time unit of attribution."""
    return seconds * 1_000_000 + nanos // 1_000


@dataclass(frozen=True)
class RewardDefinition:
    """reward(decision, item) = clip(Σ weight[o] · aggregate[o](values of o), range) over outcomes in the window.

    Fields (TOML keys of ``[surfaces.<name>.reward]``): ``weights`` outcome name → weight;
    ``attribution_window_seconds`` measured from the decision's ``served_at``; ``aggregation`` outcome name →
    "max" | "sum" (unlisted: "max"); ``range`` [low, high] (unset: derived, see the module docstring).
    """

    weights: dict[str, float] = field(default_factory=lambda: {"click": 1.0})
    attribution_window_seconds: float = 5.0
    aggregation: Mapping[str, str] = field(default_factory=dict)
    range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.weights, Mapping) or not self.weights:
            raise ValueError("reward.weights: at least one outcome is required")
        for name, weight in self.weights.items():
            if not name:
                raise ValueError("reward.weights: empty outcome name")
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                raise ValueError(f"reward.weights.{name}: weight must be a finite number, got {weight!r}")
        window = self.attribution_window_seconds
        if isinstance(window, bool) or not isinstance(window, int | float) or not (math.isfinite(window) and window > 0):
            raise ValueError(f"reward.attribution_window_seconds: must be a positive number of seconds, got {window!r}")
        if not isinstance(self.aggregation, Mapping):
            raise ValueError("reward.aggregation: must be a table of outcome name = \"max\" | \"sum\"")
        for name, rule in self.aggregation.items():
            if name not in self.weights:
                raise ValueError(f"reward.aggregation.{name}: not an outcome of reward.weights")
            if rule not in AGGREGATIONS:
                raise ValueError(f"reward.aggregation.{name}: must be one of {', '.join(AGGREGATIONS)}, got {rule!r}")
        object.__setattr__(self, "range", self._checked_range())

    def _checked_range(self) -> tuple[float, float]:
        if self.range is None:
            unbounded = sorted(n for n, w in self.weights.items() if w != 0 and self.aggregation_of(n) == "sum")
            if unbounded:
                raise ValueError(f"reward.range: required when a weighted outcome aggregates by 'sum' "
                                 f"({', '.join(unbounded)}): there is no bound to derive")
            return (float(sum(min(0.0, w) for w in self.weights.values())),
                    float(sum(max(0.0, w) for w in self.weights.values())))
        bounds = self.range
        if (isinstance(bounds, str | bytes) or not hasattr(bounds, "__len__") or len(bounds) != 2
                or not all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)):
            raise ValueError(f"reward.range: must be [low, high] of two finite numbers, got {bounds!r}")
        low, high = float(bounds[0]), float(bounds[1])
        if not low <= 0.0 <= high:
            raise ValueError(f"reward.range: must contain 0 (the reward of a decision without outcomes), "
                             f"got [{low}, {high}]")
        return (low, high)

    @property
    def low(self) -> float:
        return self.range[0]  # type: ignore[index]

    @property
    def high(self) -> float:
        return self.range[1]  # type: ignore[index]

    @property
    def window_us(self) -> int:
        """The attribution window in integer microseconds (the unit both online and offline compare in)."""
        return round(self.attribution_window_seconds * 1_000_000)

    def weight(self, outcome: str) -> float:
        """The weight of ``outcome``; raises UnknownOutcomeError for names not in the definition."""
        try:
            return self.weights[outcome]
        except KeyError:
            known = ", ".join(sorted(self.weights))
            raise UnknownOutcomeError(f"outcome: {outcome!r} is not in the reward definition ({known})") from None

    def aggregation_of(self, outcome: str) -> str:
        return self.aggregation.get(outcome, DEFAULT_AGGREGATION)

    def check_value(self, outcome: str, value: float) -> float:
        """The weight of ``outcome`` after checking ``weight · value`` fits the range on its own.

        Raises UnknownOutcomeError (unknown name) or OutcomeValueError (value: non-finite, or out of range).
        """
        weight = self.weight(outcome)
        if not math.isfinite(value):
            raise OutcomeValueError(f"value: must be finite, got {value}")
        contribution = weight * value
        if not self.low <= contribution <= self.high:
            raise OutcomeValueError(
                f"value: {outcome} = {value:g} contributes {contribution:g} (weight {weight:g}), outside the "
                f"reward range [{self.low:g}, {self.high:g}]"
            )
        return weight

    def in_window(self, served_at_us: int, occurred_at_us: int) -> bool:
        """True when an outcome at ``occurred_at_us`` counts for a decision served at ``served_at_us`` (µs)."""
        return served_at_us <= occurred_at_us <= served_at_us + self.window_us

    def clip(self, reward: float) -> float:
        return min(max(reward, self.low), self.high)


class DecisionRewards:
    """The reward rule applied incrementally to one decision's outcomes (the online learner's state).

    Feed outcomes in log order with ``add``; ``slot_rewards`` and ``slate_reward`` are what ``join_rewards``
    computes for the same outcomes (a test checks it).
    """

    def __init__(self, definition: RewardDefinition, served_at_us: int, slate_item_ids: list[str]) -> None:
        self.definition = definition
        self.served_at_us = served_at_us
        self._position_of = {item_id: position for position, item_id in enumerate(slate_item_ids)}
        self._n_slots = len(slate_item_ids)
        self._seen_ids: set[str] = set()
        # (slot, or None for the whole slate; outcome name) -> aggregated value
        self._values: dict[tuple[int | None, str], float] = {}

    def add(self, item_id: str, outcome: str, value: float, occurred_at_us: int | None, outcome_id: str = "") -> bool:
        """Applies one outcome (``item_id`` "" = the whole slate); True when it counts. Duplicates never do."""
        if outcome_id:
            if outcome_id in self._seen_ids:
                return False
            self._seen_ids.add(outcome_id)  # first of its key, even when it does not count itself
        position = self._position_of.get(item_id) if item_id else None
        if ((item_id and position is None) or outcome not in self.definition.weights or occurred_at_us is None
                or not self.definition.in_window(self.served_at_us, occurred_at_us)):
            return False
        key = (position, outcome)
        previous = self._values.get(key)
        if previous is None:
            self._values[key] = value
        elif self.definition.aggregation_of(outcome) == "sum":
            self._values[key] = previous + value
        else:
            self._values[key] = max(previous, value)
        return True

    def _reward(self, position: int | None) -> float:
        weights = self.definition.weights
        total = sum(weights[name] * value for (slot, name), value in self._values.items() if slot == position)
        return self.definition.clip(total)

    def slot_rewards(self) -> list[float]:
        return [self._reward(position) for position in range(self._n_slots)]

    def slate_reward(self) -> float:
        return self._reward(None)
