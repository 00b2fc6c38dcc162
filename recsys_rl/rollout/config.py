"""Rollout settings per surface (TOML ``[surfaces.NAME.rollout]``) and the state types the rollout parts share.

Example::

    [surfaces.home_feed.rollout]
    stage = "canary"            # baseline | shadow | canary | live (default: live, today's behaviour)
    canary_share = 0.05         # share of users (stable hash of surface and user_id) served by the learned policy
    tolerance = 0.01            # revert when canary − control < −tolerance with confidence 1 − alpha
    alpha = 0.05
    min_decisions = 500         # decisions per arm before the guardrail may pass a forward move
    auto_advance = false        # advance along ``ramp`` by itself once the guardrail has held min_decisions
    ramp = [0.01, 0.05, 0.25, 1.0]
    max_fallback_rate = 0.05    # the canary's baseline-fallback rate above which the guardrail fails
    max_latency_p50_ms = 50.0   # the learned path's median decision latency above which the guardrail fails

A configuration file cannot move a surface forward of what serves: the stage in force is the store's
(``recsys_rl.rollout.store``); the configured stage and share apply on a surface's first start, and later only when
they changed since the last start and do not move the surface forward (an audited change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class Stage(str, Enum):
    """How far the learned policy reaches real traffic, in forward order."""

    BASELINE = "baseline"
    SHADOW = "shadow"
    CANARY = "canary"
    LIVE = "live"

    @property
    def order(self) -> int:
        return _ORDER[self]

    def is_forward_of(self, other: Stage) -> bool:
        return self.order > other.order


_ORDER = {Stage.BASELINE: 0, Stage.SHADOW: 1, Stage.CANARY: 2, Stage.LIVE: 3}
STAGES = tuple(stage.value for stage in Stage)


def parse_stage(value: str, key: str = "rollout.stage") -> Stage:
    try:
        return Stage(value)
    except ValueError:
        raise ValueError(f"{key}: must be one of {', '.join(STAGES)}, got {value!r}") from None


@dataclass(frozen=True)
class RolloutConfig:
    """A surface's rollout settings (module docstring); every value is checked and errors name the key."""

    stage: str = Stage.LIVE.value
    canary_share: float = 0.05
    tolerance: float = 0.01
    alpha: float = 0.05
    min_decisions: int = 500
    auto_advance: bool = False
    ramp: tuple[float, ...] = field(default=(0.01, 0.05, 0.25, 1.0))
    max_fallback_rate: float = 0.05
    max_latency_p50_ms: float = 50.0

    def __post_init__(self) -> None:
        parse_stage(self.stage)
        if not (0.0 <= self.canary_share <= 1.0):
            raise ValueError(f"rollout.canary_share: must be in [0, 1], got {self.canary_share}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"rollout.tolerance: must be >= 0, got {self.tolerance}")
        if not (0.0 < self.alpha < 0.5):
            raise ValueError(f"rollout.alpha: must be in (0, 0.5), got {self.alpha}")
        if not (isinstance(self.min_decisions, int) and self.min_decisions >= 1):
            raise ValueError(f"rollout.min_decisions: must be a whole number >= 1, got {self.min_decisions!r}")
        if not isinstance(self.auto_advance, bool):
            raise ValueError(f"rollout.auto_advance: must be true or false, got {self.auto_advance!r}")
        ramp = tuple(self.ramp)
        if not ramp or any(not (0.0 < s <= 1.0) for s in ramp) or list(ramp) != sorted(set(ramp)):
            raise ValueError(f"rollout.ramp: must be increasing shares in (0, 1], got {list(ramp)}")
        object.__setattr__(self, "ramp", ramp)  # TOML gives a list
        if not (0.0 <= self.max_fallback_rate <= 1.0):
            raise ValueError(f"rollout.max_fallback_rate: must be in [0, 1], got {self.max_fallback_rate}")
        if not self.max_latency_p50_ms > 0:
            raise ValueError(f"rollout.max_latency_p50_ms: must be positive, got {self.max_latency_p50_ms}")

    @property
    def initial_stage(self) -> Stage:
        return Stage(self.stage)


@dataclass(frozen=True)
class RolloutState:
    """The rollout in force for one surface: what serving reads on every request (one attribute load)."""

    stage: Stage = Stage.LIVE
    canary_share: float = 0.05
    reverted: bool = False  # at stage baseline because the guardrail reverted it, until a person re-arms it
    sequence: int = 0  # the audit entry that made this state (0: not made by the trail, e.g. a default)


__all__ = ["RolloutConfig", "RolloutState", "STAGES", "Stage", "parse_stage"]
