"""The fast RequestShield (incremental caps, reads from a CandidateView, ``feasible`` fast path) against a reference.

``_ReferenceShield`` is the first, straightforward implementation kept here as the specification: every slot
recounts the placed prefix, ``explain`` loops over slots × candidates, and it offers no ``feasible`` method, so
``exploration`` takes its generic path with it. The near-duplicate rule's reference compares every pair with its own
cosine (np.dot over norms, float64). On seeded random requests and rules both must agree exactly:
static fired lists and pins, masks for arbitrary (also non-prefix) call orders, sampled slates and their
propensities bit for bit, replay propensities of arbitrary (also rule-breaking) slates, and ``explain``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pytest

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.exploration import (CappedExplorer, EpsilonGreedy, Greedy, Softmax, sample_slate,
                                           slate_propensities)
from recsys_rl.serving.candidates import CandidateInfoCache, CandidateView
from recsys_rl.shield import RequestShield, ShieldInfeasible, ShieldRules, parse_shield


class _ReferenceShield:
    def __init__(self, rules: ShieldRules, request: pb.RankRequest) -> None:
        candidates = request.candidates
        n = len(candidates)
        ok = np.ones(n, dtype=bool)
        self.fired: list[str] = []
        for i, c in enumerate(candidates):
            if c.item_id in rules.blocked_items:
                ok[i] = False
                self.fired.append(f"blocked_items:{c.item_id}")
        for key, values in rules.blocked_values:
            for i, c in enumerate(candidates):
                if ok[i] and c.features.categorical.get(key) in values:
                    ok[i] = False
                    self.fired.append(f"blocked_values[{key}]:{c.item_id}")
        need = max(1, rules.min_feasible)
        if int(ok.sum()) < need:
            raise ShieldInfeasible(f"shield: no feasible candidates (min_feasible {need}, {int(ok.sum())} of {n} "
                                   f"candidates pass the rules)")
        self.ok = ok
        self.item_ids = [c.item_id for c in candidates]
        self.caps: list[tuple[str, list[str | None], int]] = [
            (key, [c.features.categorical.get(key) for c in candidates], cap) for key, cap in rules.max_per_value]
        theta = rules.near_duplicates_max_cosine
        self.near = None if theta is None else (theta, [list(c.embedding) for c in candidates])
        self.pins: dict[int, int] = {}
        for item, slot in rules.pinned:
            if item in self.item_ids and ok[self.item_ids.index(item)]:
                self.pins[slot] = self.item_ids.index(item)

    def _similar(self, i: int, j: int) -> bool:
        theta, vectors = self.near  # type: ignore[misc]
        a, b = np.asarray(vectors[i], dtype=np.float64), np.asarray(vectors[j], dtype=np.float64)
        if a.size == 0 or a.size != b.size or not a.any() or not b.any():
            return False
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))) >= theta - 1e-12

    def _near_ok(self, i: int, placed: Sequence[int]) -> bool:
        return self.near is None or not any(self._similar(i, j) for j in placed)

    def _cap_ok(self, i: int, placed: Sequence[int]) -> bool:
        for _key, values, cap in self.caps:
            if values[i] is not None and sum(values[j] == values[i] for j in placed) >= cap:
                return False
        return True

    def pinned_at(self, slot: int, placed: Sequence[int]) -> int | None:
        i = self.pins.get(slot)
        if i is None or i in placed or not self._cap_ok(i, placed) or not self._near_ok(i, placed):
            return None
        return i

    def mask(self, remaining: np.ndarray, placed: Sequence[int]) -> np.ndarray:
        pinned = set(self.pins.values())
        return np.array([bool(self.ok[i]) and int(i) not in pinned and self._cap_ok(int(i), placed)
                         and self._near_ok(int(i), placed) for i in remaining], dtype=bool)

    def explain(self, slate: Sequence[int]) -> list[str]:
        fired = list(self.fired)
        for key, values, cap in self.caps:
            listed: set[int] = set()  # each removed candidate once, at the first slot it is out
            for k in range(len(slate)):
                placed = [int(i) for i in slate[:k]]
                for i in range(len(values)):
                    if (self.ok[i] and values[i] is not None and i not in placed and i not in listed
                            and sum(values[j] == values[i] for j in placed) >= cap):
                        listed.add(i)
                        fired.append(f"max_per_value[{key}]:{self.item_ids[i]}@slot{k}")
        if self.near is not None:
            listed = set()
            for k in range(len(slate)):
                placed = [int(i) for i in slate[:k]]
                for i in range(len(self.item_ids)):
                    if self.ok[i] and i not in placed and i not in listed and not self._near_ok(i, placed):
                        listed.add(i)
                        fired.append(f"near_duplicates:{self.item_ids[i]}@slot{k}")
        return fired


def _random_case(rng: np.random.Generator, near: np.random.Generator | None = None) -> tuple[pb.RankRequest,
                                                                                             ShieldRules]:
    """``near``: draws the embeddings and the near-duplicate rule (apart from ``rng``, whose stream the other
    rules' cases keep)."""
    n = int(rng.integers(1, 30))
    request = pb.RankRequest(request_id="r", slate_size=int(rng.integers(1, 12)))
    for _ in range(n):
        c = request.candidates.add(item_id=f"item-{rng.integers(0, 40)}")  # repeats possible: pins take the first
        if rng.random() < 0.85:
            c.features.categorical["creator"] = f"c{rng.integers(0, 6)}"
        if rng.random() < 0.6:
            c.features.categorical["topic"] = f"t{rng.integers(0, 3)}"
        if rng.random() < 0.1:
            c.features.categorical["category"] = "adult"
    table: dict = {"blocked_items": [f"item-{i}" for i in rng.choice(40, size=int(rng.integers(0, 6)))]}
    if rng.random() < 0.5:
        table["blocked_values"] = {"category": ["adult"], **({"topic": ["t2"]} if rng.random() < 0.3 else {})}
    caps = {key: int(rng.integers(1, 4)) for key in ("creator", "topic") if rng.random() < 0.7}
    if caps:
        table["max_per_value"] = caps
    slots = rng.permutation(8)[: int(rng.integers(0, 3))]
    table["pinned"] = {f"item-{rng.integers(0, 40)}": int(s) for s in slots}
    if len(table["pinned"]) < len(slots):
        table["pinned"] = {}  # two pins drew the same item: parse_shield would keep one; keep the case simple
    table["min_feasible"] = int(rng.integers(1, 3))
    if near is not None and near.random() < 0.6:
        table["near_duplicates"] = {"max_cosine": float(near.choice([0.8, 0.95, 1.0]))}
        centres = near.normal(size=(3, 3))
        for c in request.candidates:  # near-duplicates around a few directions; another dimension; none
            if near.random() < 0.85:
                c.embedding.extend((centres[near.integers(0, 3)] + near.normal(scale=0.2, size=3))
                                   .astype(np.float32).tolist() if near.random() < 0.9 else [1.0, 0.0])
    return request, parse_shield(table)


@pytest.mark.parametrize("seed", range(4))
def test_fast_shield_matches_reference(seed: int) -> None:
    rng, near = np.random.default_rng(seed), np.random.default_rng(1_000 + seed)
    explorers = [Greedy(), CappedExplorer(Softmax(0.7), 0.4), CappedExplorer(EpsilonGreedy(0.5), 1.0)]
    checked = with_view = with_rule = near_fired = 0
    for _ in range(150):
        request, rules = _random_case(rng, near)
        with_rule += rules.near_duplicates_max_cosine is not None
        try:
            reference = _ReferenceShield(rules, request)
        except ShieldInfeasible as exc:
            with pytest.raises(ShieldInfeasible, match=f"^{re.escape(str(exc))}$"):
                RequestShield(rules, request)
            continue
        n = len(request.candidates)
        fast = RequestShield(rules, request)
        assert fast.fired == reference.fired and fast.pins == reference.pins
        assert fast.ok.tolist() == reference.ok.tolist()
        # Rank's way in: the candidates read once by a CandidateView (which refuses repeated ids, so only then).
        ids = [c.item_id for c in request.candidates]
        from_view = [] if len(set(ids)) < len(ids) else [CandidateView(request, cache=CandidateInfoCache())]
        for view in from_view:
            assert RequestShield(rules, view).fired == reference.fired
        # mask / pinned_at in an arbitrary order of prefixes (the fast shield must recount when not extending).
        for _ in range(4):
            placed = [int(i) for i in rng.permutation(n)[: int(rng.integers(0, n + 1))]]
            remaining = np.array([i for i in range(n) if i not in placed], dtype=np.int64)
            slot = int(rng.integers(0, 8))
            assert fast.mask(remaining, placed).tolist() == reference.mask(remaining, placed).tolist()
            assert fast.pinned_at(slot, placed) == reference.pinned_at(slot, placed)
        scores = rng.normal(size=n)
        scores[rng.random(n) < 0.2] = 0.0  # ties: the lowest index must still win
        for explorer in explorers:
            for key in range(3):
                # A fresh fast shield per draw and a reused one: state left by earlier calls must not matter.
                for shield in (RequestShield(rules, request), fast,
                               *(RequestShield(rules, view) for view in from_view)):
                    draw = sample_slate(scores, request.slate_size, explorer, draw_key=key, feasibility=shield)
                    expected = sample_slate(scores, request.slate_size, explorer, draw_key=key,
                                            feasibility=reference)
                    assert draw == expected
                    fired = shield.explain(draw.indices)
                    assert fired == reference.explain(draw.indices)
                    near_fired += any(f.startswith("near_duplicates:") for f in fired)
                    got = slate_propensities(scores, draw.indices, explorer, feasibility=shield)
                    assert got.tobytes() == np.array([s.propensity for s in expected.slots]).tobytes()
            # Any slate, also one the rules would never produce: zeros where the reference says so, same explain.
            slate = [int(i) for i in rng.permutation(n)[: int(rng.integers(1, n + 1))]]
            got = slate_propensities(scores, slate, explorer, feasibility=fast)
            want = slate_propensities(scores, slate, explorer, feasibility=reference)
            assert got.tobytes() == want.tobytes()
            assert fast.explain(slate) == reference.explain(slate)
        checked += 1
        with_view += len(from_view)
    assert checked > 100  # most random cases are feasible: the comparison is not vacuous
    assert with_view > 30  # and many have distinct ids, so the CandidateView path is compared too
    assert with_rule > 60 and near_fired > 200  # and many have the near-duplicate rule, which removes items


def test_repeated_index_still_refused() -> None:
    request, rules = _random_case(np.random.default_rng(7))
    while len(request.candidates) < 3:
        request.candidates.add(item_id="extra")
    shield = RequestShield(parse_shield({"max_per_value": {"creator": 1}}), request)
    with pytest.raises(ValueError, match=r"slate_indices\[1\]: 0 is out of range or repeated"):
        slate_propensities(np.zeros(len(request.candidates)), [0, 0], Greedy(), feasibility=shield)
    with pytest.raises(ValueError, match=r"slate_indices\[0\]: -1 is out of range"):
        slate_propensities(np.zeros(len(request.candidates)), [-1], Greedy(), feasibility=shield)
