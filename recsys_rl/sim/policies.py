"""Hand-written reference policies over the simulator, for baselines, oracles and tests.

A policy maps a page view to an ordered slate of item ids. The oracle ones read the page view's hidden
truth, so they are yardsticks, not something a real host could run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recsys_rl.errors import InvalidInput
from recsys_rl.sim.world import PageView, World

Policy = Callable[[PageView], list[str]]


def myopic_oracle_policy(world: World) -> Policy:
    """Maximises the immediate click probability (top-k by true utility): falls for clickbait."""
    return lambda page_view: world.oracle_slate(page_view)


def quality_aware_policy(world: World, *, min_quality: float = 0.5) -> Policy:
    """Top-k by true utility among candidates of quality >= ``min_quality``, then the rest by utility.

    It gives up some immediate clicks to keep sessions long and users coming back.
    """
    if not 0.0 <= min_quality <= 1.0:
        raise InvalidInput("min_quality", f"must be in [0, 1], got {min_quality}")

    def policy(page_view: PageView) -> list[str]:
        truth = page_view.truth
        good = world.catalog.quality[truth.candidate_index] >= min_quality
        # Lexicographic: every good item before every bad one, each group by decreasing utility.
        order = np.lexsort((-truth.utility, ~good))[: page_view.slate_size]
        return [page_view.candidates[j].item_id for j in order.tolist()]

    return policy


def uniform_random_policy(world: World, rng: np.random.Generator | None = None) -> Policy:
    """A uniformly random slate per page view (default: the world's policy stream)."""
    return lambda page_view: world.random_slate(page_view, rng=rng)


def baseline_policy(page_view: PageView) -> list[str]:
    """What the host would serve on its own: candidates ordered by ``baseline_score``."""
    order = sorted(range(len(page_view.candidates)), key=lambda j: -page_view.candidates[j].baseline_score)
    return [page_view.candidates[j].item_id for j in order[: page_view.slate_size]]
