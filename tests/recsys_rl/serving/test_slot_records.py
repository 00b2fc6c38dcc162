"""The per-slot records and the draw key of the Rank hot path: DecisionSlot and SlotDraw are immutable value records
(NamedTuples since they stopped being frozen dataclasses, for speed), and draw_key's cached prefix hashes exactly what
hashing all three parts afresh does."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from recsys_rl.serving.decision import DecisionSlot
from recsys_rl.serving.exploration import EpsilonGreedy, SlotDraw, draw_key, sample_slate


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
