"""Shield rules: config parsing (errors name the key) and exact feasible propensities."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from recsys_rl.config import ConfigError, parse_config
from recsys_rl.serving.exploration import CappedExplorer, Greedy, Softmax, sample_slate, slate_propensities
from recsys_rl.shield import NoShield, ShieldInfeasible, parse_shield
from tests.helpers import make_request


def _request(n: int = 8):
    request = make_request(n, 4)
    for i, c in enumerate(request.candidates):
        c.features.categorical["creator"] = f"c{i % 3}"  # items 0,3,6 share c0; 1,4,7 c1; 2,5 c2
    request.candidates[5].features.categorical["category"] = "adult"
    return request


RULES = {"blocked_items": ["item-7"], "blocked_values": {"category": ["adult"]}, "max_per_value": {"creator": 1},
         "pinned": {"item-4": 2}}


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    base = {"surfaces": {"s": {"shield": {}}}}
    for bad, key in [({"blocked_items": "x"}, "blocked_items"), ({"max_per_value": {"creator": 0}},
                     "max_per_value.creator"), ({"pinned": {"a": -1}}, "pinned.a"), ({"nope": 1}, "nope"),
                     ({"min_feasible": 0}, "min_feasible"), ({"blocked_items_file": "missing.txt"},
                     "blocked_items_file")]:
        base["surfaces"]["s"]["shield"] = bad
        with pytest.raises(ConfigError, match=rf"^surfaces\.s\.shield\.{key}"):
            parse_config(base, base_dir=tmp_path)


def test_blocked_file_and_version(tmp_path: Path) -> None:
    (tmp_path / "blocked.txt").write_text("item-1\nitem-2\n")
    a = parse_shield({"blocked_items_file": "blocked.txt"}, base_dir=tmp_path)
    b = parse_shield({"blocked_items": ["item-2", "item-1"]})
    assert a.blocked_items == {"item-1", "item-2"} and a.version == b.version != ""
    assert parse_shield({"blocked_items": ["item-1"]}).version != a.version
    assert NoShield().version == "" and NoShield().for_request(make_request()) is None


def test_feasibility_and_fired() -> None:
    request = _request()
    shield = parse_shield(RULES).for_request(request)
    draw = sample_slate(np.arange(8.0)[::-1].copy(), 4, Greedy(), draw_key=1, feasibility=shield)
    # Greedy: item-0 (c0); item-1 (c1); slot 2 pinned item-4 is c1, already used -> infeasible, not placed; 2 (c2).
    # Slot 3: c0, c1, c2 all used and 5 adult, 7 blocked -> nothing feasible: a shorter slate.
    assert draw.indices == [0, 1, 2]
    fired = shield.explain(draw.indices)
    assert "blocked_items:item-7" in fired and "blocked_values[category]:item-5" in fired
    assert "max_per_value[creator]:item-3@slot1" in fired and "max_per_value[creator]:item-4@slot2" in fired


def test_pin_takes_its_slot() -> None:
    request = _request()
    shield = parse_shield({"pinned": {"item-6": 1}, "max_per_value": {"creator": 2}}).for_request(request)
    draw = sample_slate(np.arange(8.0)[::-1].copy(), 4, Greedy(), draw_key=1, feasibility=shield)
    assert draw.indices == [0, 6, 1, 2] and draw.slots[1].propensity == 1.0


def test_min_feasible() -> None:
    with pytest.raises(ShieldInfeasible, match="shield: no feasible candidates"):
        parse_shield({"blocked_items": [f"item-{i}" for i in range(8)]}).for_request(_request())
    with pytest.raises(ShieldInfeasible, match="min_feasible 7"):
        parse_shield({"blocked_items": ["item-0", "item-1"], "min_feasible": 7}).for_request(_request())


@pytest.mark.parametrize("cap", [0.3, 1.0])
def test_exact_propensities_sum_to_one_over_feasible(cap: float) -> None:
    """Enumerate every slate: the probabilities of all feasible slates sum to 1, each slot's exploration mass is
    within the cap, no slate breaks a rule, and replay's propensities equal the sampled ones bit for bit."""
    request = _request(7)
    shield = parse_shield({"max_per_value": {"creator": 1}, "blocked_items": ["item-5"],
                           "pinned": {"item-2": 1}}).for_request(request)
    scores = np.random.default_rng(0).normal(size=7)
    explorer = CappedExplorer(Softmax(0.5), cap)
    total = 0.0
    for slate in itertools.permutations(range(7), 3):
        p = slate_propensities(scores, list(slate), explorer, feasibility=shield)
        total += float(np.prod(p))
        if np.prod(p) > 0:
            creators = [request.candidates[i].features.categorical["creator"] for i in slate]
            assert len(set(creators)) == 3 and 5 not in slate and slate[1] == 2
    assert total == pytest.approx(1.0, abs=1e-12)
    for key in range(300):
        draw = sample_slate(scores, 3, explorer, draw_key=key, feasibility=shield)
        assert [s.propensity for s in draw.slots] == slate_propensities(scores, draw.indices, explorer,
                                                                        feasibility=shield).tolist()
        assert max(s.exploration_mass for s in draw.slots) <= cap + 1e-12
        assert all(s.greedy_index not in draw.indices[:k] for k, s in enumerate(draw.slots))
