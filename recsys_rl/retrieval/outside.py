"""Exploration beyond the retrieved set, with exact per-slot propensities (off unless ``outside_share`` > 0).

Retrieval alone leaves every catalog item it did not retrieve with probability 0, so off-policy evaluation has no
support there. With ``outside_share = s`` and the cap in force ``c``, each slot ``k`` of a retrieval request first
flips a coin (its own uniform stream, independent of the slot's inside draw):

* with probability ``q_k = s·c`` (0 when no catalog item is left outside) the slot takes an item drawn uniformly
  among the catalog items that are neither candidates (host-sent or retrieved) nor already placed; its propensity is
  ``q_k / #outside remaining``;
* otherwise the slot is drawn as usual over the candidates not yet placed, by the surface's explorer capped at
  ``c_in = (c − q)/(1 − q)``; its propensity is ``(1 − q_k)·p_in(item)``.

Both are the true conditional probabilities: the coin does not depend on the history, an outside item can only come
from the first branch and a candidate only from the second, and each branch's draw is over exactly the set it
names. The cap still bounds the slot's exploration mass: the greedy candidate keeps at least
``(1 − q)(1 − c_in) = 1 − c``, so every other item together (outside ones included) gets at most ``c``. The cap
therefore moves exploration mass from the candidates to the outside, it never adds to it; ``s = 0`` is exactly the
draw without this module.

The coins and the outside items do not depend on the scores, so the whole outside plan is drawn before the request is
scored (:func:`plan_outside`): the chosen outside items are appended to the candidates (completed from the catalog,
scored and logged like any other, baseline below every candidate so a baseline never shows them) and the inside draw
runs over the others (:func:`sample_with_outside`). A surface with shield rules does not explore outside (the shield's
feasibility is defined over the candidates); its ``outside_share`` is logged as 0.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from recsys_rl.serving.exploration import CappedExplorer, Explorer, sample_slate, uniform

_OUTSIDE_STREAM = 0x6F75747369646521  # xor'ed into the draw key: the coins' stream is not the inside draws'


@dataclass(frozen=True)
class OutsidePlan:
    """The outside part of one slate, drawn before scoring. Candidates ``[0, n_inside)`` are host-sent and
    retrieved; ``item_ids`` become candidates ``n_inside, n_inside + 1, ...`` in slot order."""

    n_inside: int
    share: float
    cap: float  # the cap in force when planned: the inside draw's c_in comes from it
    pool: int  # catalog items outside the candidates before the first slot
    probabilities: tuple[float, ...]  # q_k per slot
    outside_slots: tuple[int, ...]  # the slots that went outside, ascending
    propensities: tuple[float, ...]  # of each outside slot: q_k / #outside remaining
    draws: tuple[float, ...]  # of each outside slot: the uniform that picked its item
    item_ids: tuple[str, ...]  # the outside items, one per outside slot

    @property
    def q(self) -> float:
        return self.share * self.cap


def nth_free(excluded: list[int], n: int) -> int:
    """The ``n``-th (0-based) position not in ``excluded`` (sorted, distinct): walks the exclusions below it."""
    position = n
    for e in excluded:
        if e <= position:
            position += 1
        else:
            break
    return position


def plan_outside(catalog_ids: list[str], positions: dict[str, int], candidate_ids: list[str], *, slate_size: int,
                 share: float, cap: float, draw_key: int) -> OutsidePlan | None:
    """Which slots go outside and with which items (module docstring); None when ``share·cap`` is 0 or no catalog
    item is outside the candidates (the usual draw, at the full cap)."""
    q = share * cap
    if q <= 0.0:
        return None
    excluded = sorted({positions[i] for i in candidate_ids if i in positions})
    pool = len(catalog_ids) - len(excluded)
    if pool == 0:
        return None
    remaining = pool
    key = draw_key ^ _OUTSIDE_STREAM
    probabilities: list[float] = []
    slots: list[int] = []
    propensities: list[float] = []
    draws: list[float] = []
    items: list[str] = []
    for k in range(min(slate_size, len(candidate_ids) + pool)):
        q_k = q if remaining > 0 else 0.0
        probabilities.append(q_k)
        if uniform(key, 2 * k) < q_k:
            u = uniform(key, 2 * k + 1)
            position = nth_free(excluded, min(int(u * remaining), remaining - 1))
            draws.append(u)
            bisect.insort(excluded, position)
            slots.append(k)
            propensities.append(q_k / remaining)
            items.append(catalog_ids[position])
            remaining -= 1
    return OutsidePlan(len(candidate_ids), share, cap, pool, tuple(probabilities), tuple(slots), tuple(propensities),
                       tuple(draws), tuple(items))


@dataclass(frozen=True)
class PlannedSlot:
    index: int  # candidate index
    propensity: float
    explored: bool
    exploration_mass: float
    draw: float
    outside_probability: float


def inside_cap(cap: float, q: float) -> float:
    """c_in with (1 − q)(1 − c_in) = 1 − c: the inside explorer's cap that keeps the slot's mass within ``cap``."""
    return max(0.0, (cap - q) / (1.0 - q))


def sample_with_outside(scores: np.ndarray, plan: OutsidePlan, explorer: Explorer, *, slate_size: int,
                        draw_key: int) -> tuple[list[PlannedSlot], float]:
    """The slate: outside slots from ``plan``, the others drawn over candidates ``[0, n_inside)`` by ``explorer``
    re-capped at :func:`inside_cap`. Returns the slots and the slate propensity (their product)."""
    inner = explorer.inner if isinstance(explorer, CappedExplorer) else explorer
    q = plan.q
    capped = CappedExplorer(inner, inside_cap(plan.cap, q))
    k_max = min(slate_size, plan.n_inside + len(plan.item_ids))
    outside = dict(zip(plan.outside_slots, range(len(plan.outside_slots)), strict=True))
    n_in = k_max - sum(1 for k in outside if k < k_max)
    inside_scores = scores[: plan.n_inside]
    inside = iter(sample_slate(inside_scores, n_in, capped, draw_key=draw_key).slots if n_in else ())
    placed: list[int] = []
    slots: list[PlannedSlot] = []
    slate_propensity = 1.0
    for k in range(k_max):
        q_k = plan.probabilities[k]
        j = outside.get(k)
        if j is not None:  # the slot's mass as if drawn: the inside distribution it did not draw from
            free = np.delete(np.arange(plan.n_inside), placed)
            p, g = capped.distribution_and_greedy(inside_scores[free])
            mass = 1.0 - (1.0 - q_k) * float(p[g])
            slot = PlannedSlot(plan.n_inside + j, plan.propensities[j], True, mass, plan.draws[j], q_k)
        else:
            s = next(inside)
            mass = 1.0 - (1.0 - q_k) * (1.0 - s.exploration_mass)  # outside items are never the greedy one
            slot = PlannedSlot(s.index, (1.0 - q_k) * s.propensity, s.explored, mass, s.draw, q_k)
            placed.append(s.index)
        slots.append(slot)
        slate_propensity *= slot.propensity
    return slots, slate_propensity


__all__ = ["OutsidePlan", "PlannedSlot", "inside_cap", "nth_free", "plan_outside", "sample_with_outside"]
