"""Play a policy against the world for whole days, in process, and summarise short- and long-term outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys_rl.errors import InvalidInput
from recsys_rl.sim.policies import Policy
from recsys_rl.sim.world import World


@dataclass
class DayStats:
    """Totals of one simulated day."""

    day: int
    sessions: int = 0
    decisions: int = 0
    clicks: int = 0
    dwell_seconds: float = 0.0
    returned: int = 0  # of the users who had a session this day, how many visited the next day
    return_eligible: int = 0

    @property
    def click_rate(self) -> float:
        return self.clicks / self.decisions if self.decisions else 0.0

    @property
    def return_rate(self) -> float:
        return self.returned / self.return_eligible if self.return_eligible else 0.0


@dataclass
class RolloutStats:
    """Outcomes of a rollout; ``days[d]`` holds day d's totals."""

    n_users: int
    days: list[DayStats] = field(default_factory=list)

    @property
    def decisions(self) -> int:
        return sum(d.decisions for d in self.days)

    @property
    def clicks(self) -> int:
        return sum(d.clicks for d in self.days)

    @property
    def click_rate(self) -> float:
        """Clicks per page view (the myopic objective)."""
        return self.clicks / self.decisions if self.decisions else 0.0

    @property
    def dwell_per_user(self) -> float:
        """Total dwell seconds per user over the horizon (the long-term engagement objective)."""
        return sum(d.dwell_seconds for d in self.days) / self.n_users

    @property
    def sessions_per_user(self) -> float:
        return sum(d.sessions for d in self.days) / self.n_users

    @property
    def return_rate(self) -> float:
        """Share of sessions followed by a visit the next day."""
        eligible = sum(d.return_eligible for d in self.days)
        return sum(d.returned for d in self.days) / eligible if eligible else 0.0

    @property
    def steps_per_session(self) -> float:
        sessions = sum(d.sessions for d in self.days)
        return self.decisions / sessions if sessions else 0.0


def run_policy(world: World, policy: Policy, *, n_days: int) -> RolloutStats:
    """Serve every page view of ``n_days`` days with ``policy``; ends by starting day ``world.day + n_days``."""
    if n_days < 1:
        raise InvalidInput("n_days", f"must be >= 1, got {n_days}")
    if world.pending:
        raise InvalidInput("world", f"{world.pending} page views still await respond()")
    stats = RolloutStats(n_users=world.config.n_users)
    for _ in range(n_days):
        day = DayStats(day=world.day, sessions=world.open_sessions)
        while (page_view := world.next_page_view()) is not None:
            response = world.respond(page_view, policy(page_view))
            day.decisions += 1
            if response.clicked_item_id is not None:
                day.clicks += 1
                day.dwell_seconds += response.dwell_seconds
        report = world.next_day()
        day.returned = int(np.sum(list(report.returned.values())))
        day.return_eligible = len(report.returned)
        stats.days.append(day)
    return stats
