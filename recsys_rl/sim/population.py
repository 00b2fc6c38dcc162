"""The static part of the simulated world: the item catalog and the users' fixed attributes.

Everything here is drawn once from the world's seed and never changes; the evolving state (interests,
sessions, satisfaction) lives in ``recsys_rl.sim.world.World``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_rl.sim.config import SimConfig

_TOPIC_NAMES = ("news", "sports", "music", "tech", "food", "travel", "gaming", "science", "fashion", "finance")
DEVICES = ("mobile", "desktop", "tablet")
TIMES_OF_DAY = ("morning", "afternoon", "evening", "night")
# Sign of the preference for long items per device: phones favour short items, desktops long ones.
_DEVICE_LENGTH_SIGN = np.array([-1.0, 1.0, 0.0])


def topic_names(n_topics: int) -> tuple[str, ...]:
    """Readable topic names; past the built-in list they are ``topic<k>``."""
    return tuple(_TOPIC_NAMES[k] if k < len(_TOPIC_NAMES) else f"topic{k}" for k in range(n_topics))


@dataclass(frozen=True)
class Features:
    """Host-visible features, the simulator's mirror of the ``Features`` proto message.

    The dicts of catalog items are shared between page views: treat them as read-only.
    """

    numeric: dict[str, float]
    categorical: dict[str, str]
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """One retrieved item as the host sends it (mirror of the ``Candidate`` proto message)."""

    item_id: str
    features: Features
    embedding: tuple[float, ...] | None
    baseline_score: float


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so host.py can cache protos per catalog
class Catalog:
    """Items with their hidden truth (topic, appeal, quality, clickbait flag) and host-visible view."""

    item_ids: tuple[str, ...]
    topic: np.ndarray  # (n_items,) int
    appeal: np.ndarray  # (n_items,) click appeal, logit scale
    quality: np.ndarray  # (n_items,) in [0, 1]: share watched, budget refill, satisfaction
    length_s: np.ndarray  # (n_items,) seconds
    log_length_z: np.ndarray  # (n_items,) standardised log length, enters the device interaction
    is_clickbait: np.ndarray  # (n_items,) bool
    candidates: tuple[Candidate, ...]  # host-visible view, one per item, built once

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class Population:
    """Users' fixed attributes and the world's fixed preference tables."""

    user_ids: tuple[str, ...]
    segment: np.ndarray  # (n_users,) int, observable
    primary_device: np.ndarray  # (n_users,) int index into DEVICES
    initial_interest: np.ndarray  # (n_users, n_topics) latent topic interests at day 0
    segment_prototype: np.ndarray  # (n_segments, n_topics)
    time_of_day_affinity: np.ndarray  # (len(TIMES_OF_DAY), n_topics)


def make_catalog(config: SimConfig, rng: np.random.Generator) -> Catalog:
    """Draw the catalog. Clickbait: appeal shifted up by ``clickbait_appeal``, quality ~ Beta(1.2, 6)
    (mean 0.17) against Beta(4, 2) (mean 0.67) for regular items."""
    n = config.n_items
    names = topic_names(config.n_topics)
    topic = rng.integers(0, config.n_topics, size=n)
    is_clickbait = rng.random(n) < config.clickbait_share
    appeal = rng.normal(0.0, config.appeal_sd, size=n)
    appeal[is_clickbait] += config.clickbait_appeal
    quality = np.where(is_clickbait, rng.beta(1.2, 6.0, size=n), rng.beta(4.0, 2.0, size=n))
    log_length = np.log(config.median_length_s) + rng.normal(0.0, config.length_log_sd, size=n)
    length_s = np.exp(log_length)
    log_length_z = (log_length - log_length.mean()) / max(float(log_length.std()), 1e-9)
    appeal_signal = appeal + rng.normal(0.0, config.appeal_signal_noise, size=n)
    rating = 1.0 + 4.0 * np.clip(quality + rng.normal(0.0, config.quality_signal_noise, size=n), 0.0, 1.0)
    # The host's own score: a weak popularity signal. Popularity follows clicks, so it leans towards
    # appealing items (clickbait included), and per-item noise makes it weak.
    baseline = 0.5 * appeal + rng.normal(0.0, config.baseline_noise, size=n)
    if config.embedding_dim:
        topic_directions = rng.normal(size=(config.n_topics, config.embedding_dim))
        topic_directions /= np.linalg.norm(topic_directions, axis=1, keepdims=True)
        emb = topic_directions[topic] + rng.normal(0.0, 0.3, size=(n, config.embedding_dim))
        embeddings: list[tuple[float, ...] | None] = [tuple(row) for row in emb.astype(np.float32).tolist()]
    else:
        embeddings = [None] * n
    item_ids = tuple(f"item_{i:04d}" for i in range(n))
    length_bucket = np.where(length_s < 90, "short", np.where(length_s < 240, "medium", "long"))
    candidates = tuple(
        Candidate(
            item_id=item_ids[i],
            features=Features(
                numeric={"appeal_signal": float(appeal_signal[i]), "length_s": float(length_s[i]),
                         "rating": float(rating[i])},
                categorical={"topic": names[topic[i]]},
                tags=(f"topic:{names[topic[i]]}", f"length:{length_bucket[i]}"),
            ),
            embedding=embeddings[i],
            baseline_score=float(baseline[i]),
        )
        for i in range(n)
    )
    return Catalog(item_ids=item_ids, topic=topic, appeal=appeal, quality=quality, length_s=length_s,
                   log_length_z=log_length_z, is_clickbait=is_clickbait, candidates=candidates)


def make_population(config: SimConfig, rng: np.random.Generator) -> Population:
    """Draw users. A segment's prototype likes ``segment_liked_topics`` topics (+1) and dislikes the rest
    (-0.5); a user's interest is the prototype plus N(0, interest_noise) per topic."""
    prototype = np.full((config.n_segments, config.n_topics), -0.5)
    for s in range(config.n_segments):
        prototype[s, rng.choice(config.n_topics, size=config.segment_liked_topics, replace=False)] = 1.0
    segment = rng.integers(0, config.n_segments, size=config.n_users)
    interest = prototype[segment] + rng.normal(0.0, config.interest_noise, size=(config.n_users, config.n_topics))
    return Population(
        user_ids=tuple(f"user_{u:05d}" for u in range(config.n_users)),
        segment=segment,
        primary_device=rng.integers(0, len(DEVICES), size=config.n_users),
        initial_interest=interest,
        segment_prototype=prototype,
        time_of_day_affinity=rng.normal(0.0, 1.0, size=(len(TIMES_OF_DAY), config.n_topics)),
    )


def static_utility(config: SimConfig, catalog: Catalog, population: Population) -> np.ndarray:
    """The user-independent part of each item's utility, per (time of day, device): shape (4, 3, n_items).

    static[t, d, i] = appeal_i + w_tod · affinity[t, topic_i] + w_dev · sign_d · z(log length_i)
    """
    tod = config.time_of_day_weight * population.time_of_day_affinity[:, catalog.topic]  # (4, n_items)
    device = config.device_length_weight * _DEVICE_LENGTH_SIGN[:, None] * catalog.log_length_z[None, :]  # (3, n)
    return catalog.appeal[None, None, :] + tod[:, None, :] + device[None, :, :]
