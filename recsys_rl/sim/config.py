"""Knobs of the simulated world (see ``recsys_rl.sim.world`` for the model they parametrise)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from recsys_rl.errors import InvalidInput


@dataclass(frozen=True)
class SimConfig:
    """Every number the simulator uses; defaults give a world where clickbait is a real trap.

    Times are in simulated seconds. Utilities are on the logit scale of the choice model.
    """

    # --- catalog ---
    n_items: int = 200  # items in the catalog
    n_topics: int = 8  # latent topics; each item has exactly one
    clickbait_share: float = 0.15  # share of items that are clickbait (high appeal, low quality)
    appeal_sd: float = 0.5  # sd of click appeal of regular items (logit scale)
    clickbait_appeal: float = 1.6  # mean extra appeal of clickbait items (logit scale)
    appeal_signal_noise: float = 0.5  # sd of the noise on the host-visible "appeal_signal" feature
    quality_signal_noise: float = 0.25  # sd of the noise on the host-visible "rating" feature (quality proxy)
    median_length_s: float = 150.0  # median item length (seconds); lengths are log-normal
    length_log_sd: float = 0.6  # sd of log item length
    embedding_dim: int = 8  # size of the optional item embedding (topic direction + noise); 0 = none
    baseline_noise: float = 1.0  # sd of the fixed per-item noise in the host's baseline_score

    # --- users and context ---
    n_users: int = 1000  # simulated users
    n_segments: int = 5  # observable user segments; each has its own topic-interest prototype
    segment_liked_topics: int = 2  # topics each segment prototype likes (+1); the others are disliked (-0.5)
    interest_noise: float = 0.5  # sd of each user's deviation from the segment prototype
    interest_weight: float = 1.2  # weight of user interest in the item's topic
    time_of_day_weight: float = 0.6  # weight of the (time_of_day, topic) affinity table
    device_length_weight: float = 0.6  # weight of the (device, item length) interaction
    primary_device_prob: float = 0.8  # probability that a session uses the user's primary device
    history_decay: float = 0.9  # decay of the per-topic click history shown as "hist_<topic>" context

    # --- requests and choice ---
    n_candidates: int = 30  # candidates per page view, sampled uniformly from the catalog
    slate_size: int = 5  # slate size the host asks for
    no_click_utility: float = 4.0  # utility of the no-click option (higher = fewer clicks)
    position_decay: float = 0.8  # attractiveness multiplier per position down the slate (0 < d <= 1)

    # --- sessions ---
    session_budget_s: float = 600.0  # mean time budget of a session (log-normal, sd 0.2 on log scale)
    max_steps_per_session: int = 40  # a session ends after this many page views at the latest
    browse_cost_s: float = 20.0  # budget a page view costs when nothing is clicked
    click_cost_s: float = 5.0  # fixed budget cost of a click on top of the dwell
    min_watch_fraction: float = 0.2  # dwell = length * (min + (1 - min) * quality) * noise
    budget_refill: float = 1.3  # a click gives back refill * quality * dwell: good content (q > 1/refill) replenishes
    interest_drift: float = 0.05  # on a click, interest in the topic moves this share of the way to interest_cap
    interest_cap: float = 1.5  # upper bound that drifting interests approach

    # --- returns between sessions (days) ---
    return_bias: float = 0.0  # logit of the visit probability at reference satisfaction
    return_quality_weight: float = 5.0  # logit slope of the visit probability in satisfaction
    satisfaction_ref: float = 0.5  # satisfaction at which the visit probability is sigmoid(return_bias)
    satisfaction_memory: float = 0.5  # satisfaction <- memory * old + (1 - memory) * session quality
    no_click_quality: float = 0.4  # prior quality of a session (pseudo-click); a click-less session scores this

    def __post_init__(self) -> None:
        positive_ints = ("n_items", "n_topics", "n_users", "n_segments", "n_candidates", "slate_size",
                         "max_steps_per_session", "segment_liked_topics")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise InvalidInput(f"SimConfig.{name}", f"must be >= 1, got {getattr(self, name)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidInput(f"SimConfig.{f.name}", f"must be finite, got {value}")
        if self.embedding_dim < 0:
            raise InvalidInput("SimConfig.embedding_dim", f"must be >= 0, got {self.embedding_dim}")
        if self.n_candidates > self.n_items:
            raise InvalidInput("SimConfig.n_candidates",
                               f"must be <= n_items ({self.n_items}), got {self.n_candidates}")
        if self.slate_size > self.n_candidates:
            raise InvalidInput("SimConfig.slate_size",
                               f"must be <= n_candidates ({self.n_candidates}), got {self.slate_size}")
        if self.segment_liked_topics > self.n_topics:
            raise InvalidInput("SimConfig.segment_liked_topics", f"must be <= n_topics ({self.n_topics})")
        unit_interval = ("clickbait_share", "primary_device_prob", "history_decay", "min_watch_fraction",
                         "interest_drift", "satisfaction_memory", "no_click_quality", "satisfaction_ref")
        for name in unit_interval:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidInput(f"SimConfig.{name}", f"must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.position_decay <= 1.0:
            raise InvalidInput("SimConfig.position_decay", f"must be in (0, 1], got {self.position_decay}")
        non_negative = ("appeal_sd", "appeal_signal_noise", "quality_signal_noise", "length_log_sd", "baseline_noise",
                        "interest_noise", "browse_cost_s", "click_cost_s", "budget_refill")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise InvalidInput(f"SimConfig.{name}", f"must be >= 0, got {getattr(self, name)}")
        for name in ("median_length_s", "session_budget_s"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"SimConfig.{name}", f"must be > 0, got {getattr(self, name)}")
