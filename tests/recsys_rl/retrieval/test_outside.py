"""Exploration beyond the retrieved set: the logged per-slot propensities are the true probabilities (empirical
frequencies over many seeded draws), the cap bounds the exploration mass, and outside_share = 0 changes nothing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recsys_rl.retrieval.outside import inside_cap, nth_free, plan_outside, sample_with_outside
from recsys_rl.serving.exploration import CappedExplorer, EpsilonGreedy, Softmax, draw_key, sample_slate

CATALOG = [f"c{i}" for i in range(9)]
POSITIONS = {item_id: i for i, item_id in enumerate(CATALOG)}
CANDIDATES = ["c7", "c2", "c4", "host-only"]  # host-only: sent by the host, not in the catalog (no outside effect)
SCORES_INSIDE = np.array([0.9, 0.3, 0.5, 0.1])
SLATE, CAP, SHARE, DRAWS = 3, 0.5, 0.6, 40_000


def _draw(key: int, explorer: CappedExplorer) -> tuple[tuple[str, ...], list[float], list[float]]:
    plan = plan_outside(CATALOG, POSITIONS, CANDIDATES, slate_size=SLATE, share=SHARE, cap=CAP, draw_key=key)
    assert plan is not None
    ids = CANDIDATES + list(plan.item_ids)
    scores = np.concatenate([SCORES_INSIDE, np.zeros(len(plan.item_ids))])  # outside items: scored, never drawn
    slots, slate_propensity = sample_with_outside(scores, plan, explorer, slate_size=SLATE, draw_key=key)
    assert slate_propensity == pytest.approx(float(np.prod([s.propensity for s in slots])))
    return tuple(ids[s.index] for s in slots), [s.propensity for s in slots], [s.exploration_mass for s in slots]


@pytest.mark.parametrize("inner", [EpsilonGreedy(0.5), Softmax(0.2)], ids=["epsilon_greedy", "softmax"])
def test_logged_propensities_match_empirical_frequencies(inner: object) -> None:
    """Stated tolerance: every ordered slate's frequency over 40k seeded draws lies within 4.5 standard errors
    (+1e-4) of its logged slate propensity; every slot-0 item's frequency likewise; the logged propensities of
    the slates that can occur sum to 1 (no mass lost)."""
    explorer = CappedExplorer(inner, CAP)  # type: ignore[arg-type]
    counts: Counter[tuple[str, ...]] = Counter()
    logged: dict[tuple[str, ...], float] = {}
    first: dict[str, float] = {}
    for r in range(DRAWS):
        slate, propensities, masses = _draw(draw_key(7, "s", f"r{r}"), explorer)
        counts[slate] += 1
        p = float(np.prod(propensities))
        assert logged.setdefault(slate, p) == pytest.approx(p, rel=1e-12)  # the same slate, the same propensity
        first[slate[0]] = propensities[0]
        assert max(masses) <= CAP + 1e-12  # the cap bounds inside and outside exploration together
    assert sum(logged.values()) == pytest.approx(1.0, abs=2e-3)  # (slates with p < ~1e-5 may not occur)
    for slate, p in logged.items():
        freq = counts[slate] / DRAWS
        assert abs(freq - p) <= 4.5 * np.sqrt(p * (1 - p) / DRAWS) + 1e-4, (slate, freq, p)
    for item, p in first.items():
        freq = sum(c for s, c in counts.items() if s[0] == item) / DRAWS
        assert abs(freq - p) <= 4.5 * np.sqrt(p * (1 - p) / DRAWS) + 1e-4, (item, freq, p)
    outside = {i for s in counts for i in s} - set(CANDIDATES)
    assert outside == set(CATALOG) - set(CANDIDATES)  # every catalog item outside the candidates has support
    q = SHARE * CAP
    for item in outside:  # slot 0: uniform over the 6 catalog items left outside, q each in all
        assert first[item] == pytest.approx(q / 6)


def test_the_greedy_candidate_keeps_one_minus_cap() -> None:
    q = SHARE * CAP
    assert (1 - q) * (1 - inside_cap(CAP, q)) == pytest.approx(1 - CAP)
    assert inside_cap(CAP, 0.0) == CAP and inside_cap(CAP, CAP) == 0.0


def test_share_zero_or_no_item_outside_plans_nothing() -> None:
    assert plan_outside(CATALOG, POSITIONS, CANDIDATES, slate_size=SLATE, share=0.0, cap=CAP, draw_key=1) is None
    everything = CATALOG + ["host-only"]  # no catalog item left outside: the usual draw at the full cap
    assert plan_outside(CATALOG, POSITIONS, everything, slate_size=SLATE, share=SHARE, cap=CAP, draw_key=5) is None


def test_slots_that_stay_inside_draw_as_sample_slate_at_the_inside_cap() -> None:
    """The inside draws are sample_slate's over the candidates, at c_in, each propensity times (1 - q)."""
    explorer = CappedExplorer(EpsilonGreedy(0.5), CAP)
    q = SHARE * CAP
    for r in range(200):
        key = draw_key(1, "s", f"r{r}")
        plan = plan_outside(CATALOG, POSITIONS, CANDIDATES, slate_size=SLATE, share=SHARE, cap=CAP, draw_key=key)
        assert plan is not None
        if plan.outside_slots:
            continue
        slots, _ = sample_with_outside(SCORES_INSIDE, plan, explorer, slate_size=SLATE, draw_key=key)
        usual = sample_slate(SCORES_INSIDE, SLATE, CappedExplorer(EpsilonGreedy(0.5), inside_cap(CAP, q)),
                             draw_key=key)
        assert [(s.index, s.propensity) for s in slots] == [(u.index, (1 - q) * u.propensity) for u in usual.slots]


def test_nth_free_skips_the_excluded_positions() -> None:
    excluded = [0, 2, 3, 7]
    free = [i for i in range(10) if i not in excluded]
    assert [nth_free(excluded, n) for n in range(len(free))] == free
