"""The Rank hot path's rewrites against what they replaced: DecisionSlot and SlotDraw are immutable value records
(NamedTuples since they stopped being frozen dataclasses, for speed), draw_key's cached prefix hashes exactly what
hashing all three parts afresh does, and the epsilon sampler's walk past the greedy finds the slot bisecting numpy's
cumsum did."""

from __future__ import annotations

import bisect
import hashlib
import math
import random

import numpy as np
import pytest

from recsys_rl.serving.decision import DecisionSlot
from recsys_rl.serving.exploration import (
    EpsilonGreedy, SlotDraw, _epsilon_slot, _epsilon_values, draw_key, sample_slate,
)


def _reference_key(server_seed: int, surface: str, request_id: str) -> int:
    """draw_key as it was written before its prefix was cached: blake2b over the three length-prefixed parts."""
    h = hashlib.blake2b(digest_size=8)
    for part in (str(server_seed & 0xFFFFFFFFFFFFFFFF).encode(), surface.encode(), request_id.encode()):
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    return int.from_bytes(h.digest(), "little")


def test_draw_key_equals_hashing_every_part_afresh() -> None:
    rng = random.Random(11)
    surfaces = ["default", "", "héllo", "x" * 300, "a", "ab"]
    for _ in range(3000):
        seed = rng.getrandbits(70) - (1 << 69)  # negative and wider than 64 bits too: masked the same way
        surface = rng.choice(surfaces)
        request_id = "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(0, 40)))
        assert draw_key(seed, surface, request_id) == _reference_key(seed, surface, request_id)
    # Parts stay apart after caching: ("ab", "c") and ("a", "bc") differ, as do interleaved surfaces.
    assert draw_key(0, "ab", "c") != draw_key(0, "a", "bc")
    assert draw_key(1, "default", "r") != draw_key(2, "default", "r")


def test_slot_records_are_immutable_values() -> None:
    slot = DecisionSlot(3, "item-3", 0.25, -1.5, True, 0.1, 0.7)
    assert slot.outside_probability == 0.0
    assert slot == DecisionSlot(3, "item-3", 0.25, -1.5, True, 0.1, 0.7)
    assert slot != DecisionSlot(3, "item-3", 0.25, -1.5, True, 0.1, 0.71)
    with pytest.raises(AttributeError):
        slot.propensity = 1.0  # type: ignore[misc]
    draw = sample_slate(np.linspace(0.0, 1.0, 20), 5, EpsilonGreedy(0.3), draw_key=draw_key(0, "s", "r"))
    first = draw.slots[0]
    assert isinstance(first, SlotDraw)
    assert first == SlotDraw(first.index, first.propensity, first.explored, first.exploration_mass, first.draw,
                             first.greedy_index)
    with pytest.raises(AttributeError):
        first.index = 0  # type: ignore[misc]
    assert repr(first).startswith("SlotDraw(index=")


def _reference_epsilon_slot(n: int, g: int, u: float, q: float, pg: float) -> int:
    """_epsilon_slot before its past-the-greedy walk: bisect over the whole CDF as numpy's cumsum builds it."""
    p = np.full(n, q)
    p[g] = pg
    cdf = p.cumsum().tolist()
    i = bisect.bisect_right(cdf, u * cdf[-1])
    if i >= n or (pg if i == g else q) <= 0.0:
        i = n - 1 if q > 0.0 else g
    return i


def test_epsilon_slot_walk_past_the_greedy_equals_bisecting_the_cumsum() -> None:
    rng = random.Random(5)
    for _ in range(5_000):
        n = rng.choice([1, 2, 3, 10, 91, 100, 257])
        g = rng.randrange(n)
        epsilon, cap = rng.choice([(0.0, None), (1.0, None), (0.3, None), (1.0, 0.1), (1.0, 0.01), (0.05, 0.5)])
        q, pg = _epsilon_values(n, epsilon, cap)
        p = np.full(n, q)
        p[g] = pg
        cdf = p.cumsum().tolist()
        # The walk's edges: u whose target u·total is (within an ulp of) a CDF value at or past the greedy, where
        # > against >= and the CDF's exact rounding decide the slot; u near 0 and 1; anywhere.
        j = rng.randrange(g, n)
        edge = cdf[j] / cdf[-1]
        for u in (rng.random(), 0.0, 1.0 - 2.0 ** -53, edge, math.nextafter(edge, 0.0), math.nextafter(edge, 1.0)):
            u = min(u, 1.0 - 2.0 ** -53)
            assert _epsilon_slot(n, g, u, q, pg) == _reference_epsilon_slot(n, g, u, q, pg), (n, g, u, q, pg)
