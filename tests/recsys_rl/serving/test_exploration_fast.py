"""The epsilon-greedy fast path of ``sample_slate`` draws the generic loop's slate with its propensities, bit for bit.

The reference is the same explorer behind a wrapper whose type the fast path does not recognise, so ``sample_slate``
takes its generic slot-by-slot loop (a distribution, a cumsum and an inverse CDF per slot); replay's
``slate_propensities`` must give the same doubles for the drawn slate. Seeded: many requests, every cap regime (0, the
cap binding, the cap above epsilon, 1), ties, a slate as long as the candidates, and a real shield (blocked items,
one per creator, a pin).
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys_rl.serving import exploration
from recsys_rl.serving.exploration import (
    CappedExplorer,
    EpsilonGreedy,
    Explorer,
    Greedy,
    SlateDraw,
    sample_slate,
    slate_propensities,
)
from recsys_rl.shield import parse_shield
from tests.helpers import make_request


class Opaque:
    """``inner`` under a type the fast path does not know: sample_slate's generic loop (the reference)."""

    def __init__(self, inner: Explorer) -> None:
        self.inner = inner

    def distribution(self, scores: np.ndarray) -> np.ndarray:
        return self.inner.distribution(scores)

    def distribution_and_greedy(self, scores: np.ndarray) -> tuple[np.ndarray, int]:
        return self.inner.distribution_and_greedy(scores)  # type: ignore[attr-defined]


EXPLORERS: dict[str, Explorer] = {
    "cap 0": CappedExplorer(EpsilonGreedy(0.3), 0.0),
    "cap binds": CappedExplorer(EpsilonGreedy(0.5), 0.1),
    "epsilon = cap (the default)": CappedExplorer(EpsilonGreedy(0.1), 0.1),
    "cap above epsilon": CappedExplorer(EpsilonGreedy(0.05), 0.3),
    "cap 1, epsilon 1": CappedExplorer(EpsilonGreedy(1.0), 1.0),
    "epsilon 0": CappedExplorer(EpsilonGreedy(0.0), 0.2),
    "uncapped": EpsilonGreedy(0.37),
    "greedy": Greedy(),
    "capped greedy": CappedExplorer(Greedy(), 0.4),
}


def _scores(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.integers(4)
    if kind == 0:
        return rng.normal(size=n)
    if kind == 1:  # many ties: the greedy is the lowest index among equals
        return rng.integers(0, 3, size=n).astype(np.float64)
    if kind == 2:  # signed zeros tie too
        return rng.choice([0.0, -0.0, 1.0], size=n)
    return np.full(n, 0.5)


def _same(fast: SlateDraw, generic: SlateDraw) -> None:
    assert fast == generic  # every slot's index, propensity, explored, mass, draw and greedy; the slate propensity
    for a, b in zip(fast.slots, generic.slots, strict=True):
        assert type(a.propensity) is float and type(a.exploration_mass) is float  # what the log writer reads


@pytest.mark.parametrize("name", EXPLORERS)
def test_fast_slates_equal_the_generic_loop(name: str) -> None:
    explorer = EXPLORERS[name]
    assert exploration._epsilon_parameters(explorer) is not None  # the fast path is what is tested
    rng = np.random.default_rng(11)
    for _ in range(1500):
        n = int(rng.integers(1, 130))
        scores = _scores(rng, n)
        slate_size = int(rng.integers(1, n + 3))  # past n: a slate of every candidate
        key = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(2))
        fast = sample_slate(scores, slate_size, explorer, draw_key=key)
        _same(fast, sample_slate(scores, slate_size, Opaque(explorer), draw_key=key))
        replayed = slate_propensities(scores, fast.indices, explorer)
        assert replayed.tolist() == [s.propensity for s in fast.slots]


def test_fast_path_explores_and_falls_back_like_the_generic_loop() -> None:
    """Enough draws that explored slots, slots past the greedy position and the u·total = total edge all occur."""
    explorer = CappedExplorer(EpsilonGreedy(0.9), 0.9)
    rng = np.random.default_rng(5)
    explored = 0
    for key in range(3000):
        scores = rng.normal(size=40)
        fast = sample_slate(scores, 10, explorer, draw_key=key)
        _same(fast, sample_slate(scores, 10, Opaque(explorer), draw_key=key))
        explored += sum(s.explored for s in fast.slots)
    assert explored > 3000 * 10 * 0.5
    # u close to 1: the target rounds up to the CDF's total, where the inverse CDF takes the last positive candidate
    for n, g in [(3, 0), (3, 2), (7, 6), (100, 50)]:
        for epsilon in (0.0, 0.4, 1.0):
            q, pg = exploration._epsilon_values(n, epsilon, None)
            p = np.full(n, q)
            p[g] = pg
            for u in (0.0, 0.5, 1.0 - 2.0**-53):
                assert exploration._epsilon_slot(n, g, u, q, pg) == exploration._inverse_cdf(p, u)


def _shield_request(n: int, rng: np.random.Generator):
    request = make_request(n, 4)
    for i, c in enumerate(request.candidates):
        c.features.categorical["creator"] = f"c{int(rng.integers(4))}"
    return request


@pytest.mark.parametrize("name", ["cap 0", "cap binds", "epsilon = cap (the default)", "uncapped", "greedy"])
def test_fast_slots_under_a_shield_equal_the_generic_loop(name: str) -> None:
    explorer = EXPLORERS[name]
    rules = parse_shield({"blocked_items": ["item-1", "item-6"], "max_per_value": {"creator": 2},
                          "pinned": {"item-3": 1}})
    rng = np.random.default_rng(3)
    for key in range(400):
        n = int(rng.integers(8, 40))
        request = _shield_request(n, rng)
        scores = _scores(rng, n)
        shield = rules.for_request(request)
        fast = sample_slate(scores, 6, explorer, draw_key=key, feasibility=shield)
        _same(fast, sample_slate(scores, 6, Opaque(explorer), draw_key=key, feasibility=rules.for_request(request)))
        replayed = slate_propensities(scores, fast.indices, explorer, feasibility=rules.for_request(request))
        assert replayed.tolist() == [s.propensity for s in fast.slots]


def test_the_fast_paths_caches_stay_bounded_and_evicting_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exploration, "_TOTALS_MAX", 5)
    monkeypatch.setattr(exploration, "_PREFIX_MAX", 2)
    monkeypatch.setattr(exploration, "_TOTALS", {})
    monkeypatch.setattr(exploration, "_PREFIX", {})
    explorer = EXPLORERS["epsilon = cap (the default)"]
    rng = np.random.default_rng(8)
    for key in range(300):
        n = int(rng.integers(5, 60))
        scores = _scores(rng, n)
        _same(sample_slate(scores, 5, explorer, draw_key=key), sample_slate(scores, 5, Opaque(explorer), draw_key=key))
        assert len(exploration._TOTALS) <= 5 and len(exploration._PREFIX) <= 2
