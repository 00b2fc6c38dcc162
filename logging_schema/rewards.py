"""Reward definitions: which outcomes count, with what weight, inside which attribution window."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class UnknownOutcomeError(ValueError):
    """An outcome name that the surface's reward definition does not list."""


@dataclass(frozen=True)
class RewardDefinition:
    """reward(decision, item) = Σ weight[outcome] · value over outcomes inside the window.

    ``attribution_window_seconds`` is measured from the decision's ``served_at``; an outcome whose
    ``occurred_at`` falls later does not count. No outcome inside the window means reward 0.
    """

    weights: dict[str, float] = field(default_factory=lambda: {"click": 1.0})
    attribution_window_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError("reward.weights: at least one outcome is required")
        for name, weight in self.weights.items():
            if not name:
                raise ValueError("reward.weights: empty outcome name")
            if not math.isfinite(weight):
                raise ValueError(f"reward.weights.{name}: weight must be finite, got {weight}")
        if not (math.isfinite(self.attribution_window_seconds) and self.attribution_window_seconds > 0):
            raise ValueError(
                "reward.attribution_window_seconds: must be a positive number of seconds, "
                f"got {self.attribution_window_seconds}"
            )

    def weight(self, outcome: str) -> float:
        """The weight of ``outcome``; raises UnknownOutcomeError for names not in the definition."""
        try:
            return self.weights[outcome]
        except KeyError:
            known = ", ".join(sorted(self.weights))
            raise UnknownOutcomeError(f"outcome: {outcome!r} is not in the reward definition ({known})") from None

    def in_window(self, served_at_s: float, occurred_at_s: float) -> bool:
        """True when an outcome at ``occurred_at_s`` counts for a decision served at ``served_at_s``."""
        return served_at_s <= occurred_at_s <= served_at_s + self.attribution_window_seconds
