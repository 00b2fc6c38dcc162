"""Exploration with caps and exact per-slot propensities.

An :class:`Explorer` turns scores (higher = better) into a probability distribution over the same
items. The greedy item is ``argmax(scores)`` with ties broken by the lowest index, and the
*exploration mass* of a distribution ``p`` is ``1 - p[greedy]``. :class:`CappedExplorer` bounds that
mass by the surface's cap (invariant 2) whatever explorer it wraps.

A slate is drawn slot by slot without replacement (:func:`sample_slate`): slot ``k`` draws from the
explorer's distribution over the candidates not yet placed, by inverse CDF on a uniform ``u_k`` that is
a pure function of the 64-bit draw key and ``k``. The logged propensity of slot ``k`` is the exact
probability of the drawn item in that distribution, so

    P(slate) = Π_k p_k(a_k | a_0 … a_{k-1})

and :func:`slate_propensities` recomputes the same numbers for any given slate (counterfactual replay),
bit for bit, because both compute each slot's distribution with the explorer's ``distribution_and_greedy`` (or
:func:`_slot_distribution`, the same call) on the same remaining-candidates array, then :func:`_inverse_cdf`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from recsys_rl.config import ExplorationConfig

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_TWO_POW_MINUS_53 = 1.0 / (1 << 53)


@runtime_checkable
class Explorer(Protocol):
    """Maps scores (shape (n,), higher = better) to probabilities (shape (n,), float64, sum 1)."""

    def distribution(self, scores: np.ndarray) -> np.ndarray: ...


def greedy_index(scores: np.ndarray) -> int:
    """argmax with ties broken by the lowest index (argmax returns the first maximum)."""
    return int(np.asarray(scores).argmax())


def _check_scores(scores: np.ndarray) -> np.ndarray:
    if type(scores) is not np.ndarray or scores.dtype != np.float64:
        scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores: expected a non-empty 1-d array, got shape {scores.shape}")
    return scores


# Each explorer below also has ``distribution_and_greedy(scores) -> (p, greedy)`` for trusted float64
# input: the slate sampler calls it once per slot, so the argmax is not recomputed and the input is not
# re-validated (numpy call overhead, not arithmetic, dominates at n = 100). NumPy *methods* are used
# over module functions for the same reason (about half the dispatch cost).


@dataclass(frozen=True)
class Greedy:
    """All mass on the greedy item."""

    def distribution(self, scores: np.ndarray) -> np.ndarray:
        return self.distribution_and_greedy(_check_scores(scores))[0]

    def distribution_and_greedy(self, scores: np.ndarray) -> tuple[np.ndarray, int]:
        g = int(scores.argmax())
        p = np.zeros(scores.size)
        p[g] = 1.0
        return p, g


@dataclass(frozen=True)
class EpsilonGreedy:
    """p(a) = ε/n + (1 − ε)·1{a = greedy}."""

    epsilon: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon: must be in [0, 1], got {self.epsilon}")

    def distribution(self, scores: np.ndarray) -> np.ndarray:
        return self.distribution_and_greedy(_check_scores(scores))[0]

    def distribution_and_greedy(self, scores: np.ndarray) -> tuple[np.ndarray, int]:
        g = int(scores.argmax())
        p = np.empty(scores.size)
        p.fill(self.epsilon / scores.size)
        p[g] += 1.0 - self.epsilon
        return p, g


@dataclass(frozen=True)
class Softmax:
    """p(a) ∝ exp((score(a) − max score) / temperature); shifting by the max keeps exp finite."""

    temperature: float

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature: must be positive and finite, got {self.temperature}")

    def distribution(self, scores: np.ndarray) -> np.ndarray:
        return self.distribution_and_greedy(_check_scores(scores))[0]

    def distribution_and_greedy(self, scores: np.ndarray) -> tuple[np.ndarray, int]:
        g = int(scores.argmax())
        weights = np.exp((scores - scores[g]) * (1.0 / self.temperature))
        weights /= weights.sum()
        return weights, g


@dataclass(frozen=True)
class SquareCB:
    """Inverse-gap weighting (Foster & Rakhlin 2020).

    p(a) = 1 / (n + γ·(max score − score(a))) for every a other than the greedy item, which gets the
    rest: 1 − Σ_{a≠greedy} p(a). That rest is ≥ 1/n because each other term is ≤ 1/n.
    """

    gamma: float

    def __post_init__(self) -> None:
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise ValueError(f"gamma: must be positive and finite, got {self.gamma}")

    def distribution(self, scores: np.ndarray) -> np.ndarray:
        return self.distribution_and_greedy(_check_scores(scores))[0]

    def distribution_and_greedy(self, scores: np.ndarray) -> tuple[np.ndarray, int]:
        g = int(scores.argmax())
        p = scores - scores[g]
        p *= -self.gamma
        p += scores.size
        np.reciprocal(p, out=p)
        p[g] = 0.0
        p[g] = 1.0 - p.sum()
        return p, g


@dataclass(frozen=True)
class CappedExplorer:
    """Bounds any explorer's exploration mass by ``cap`` (invariant 2).

    With m = 1 − p[greedy] of the inner distribution p: if m ≤ cap, p is used as is; otherwise
    p' = (cap/m)·p + (1 − cap/m)·e_greedy, whose exploration mass is exactly cap: the non-greedy
    items keep their relative odds and the greedy item gets 1 − cap. cap = 0 is greedy.
    """

    inner: Explorer
    cap: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.cap <= 1.0:
            raise ValueError(f"cap: must be in [0, 1], got {self.cap}")

    def distribution(self, scores: np.ndarray) -> np.ndarray:
        return self.distribution_and_greedy(_check_scores(scores))[0]

    def distribution_and_greedy(self, scores: np.ndarray) -> tuple[np.ndarray, int]:
        if self.cap <= 0.0:
            return Greedy().distribution_and_greedy(scores)
        p, g = _distribution_and_greedy(self.inner, scores)
        mass = 1.0 - p[g]
        if mass > self.cap:
            p = p * (self.cap / mass)
            p[g] = 1.0 - self.cap
        return p, g


def _distribution_and_greedy(explorer: Explorer, scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Fast path for our explorers; any other Explorer goes through its public distribution()."""
    fast = getattr(explorer, "distribution_and_greedy", None)
    if fast is not None:
        return fast(scores)
    return np.asarray(explorer.distribution(scores), dtype=np.float64), int(scores.argmax())


def _fast_distribution(explorer: Explorer) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    """:func:`_distribution_and_greedy` for ``explorer`` as one callable, looked up once per slate."""
    fast = getattr(explorer, "distribution_and_greedy", None)
    return fast if fast is not None else functools.partial(_distribution_and_greedy, explorer)


def effective_epsilon(cfg: ExplorationConfig, cap: float) -> float:
    """Epsilon-greedy's epsilon: the configured one, or the cap in force when none is configured."""
    return cap if cfg.epsilon is None else cfg.epsilon


def make_explorer(cfg: ExplorationConfig, cap: float) -> Explorer:
    """The surface's explorer from its config, bounded by ``cap``."""
    inner: Explorer
    if cfg.algorithm == "epsilon_greedy":
        inner = EpsilonGreedy(effective_epsilon(cfg, cap))
    elif cfg.algorithm == "softmax":
        inner = Softmax(cfg.temperature)
    elif cfg.algorithm == "squarecb":
        inner = SquareCB(cfg.gamma)
    else:  # ExplorationConfig validates, but a hand-built one could still slip through.
        raise ValueError(f"exploration.algorithm: unknown algorithm {cfg.algorithm!r}")
    return CappedExplorer(inner, cap)


# --- seed material and the uniform stream -------------------------------------------------------


def draw_key(server_seed: int, surface: str, request_id: str) -> int:
    """64-bit key of a decision's random draw: blake2b(server_seed, surface, request_id).

    Length-prefixing each part keeps ("ab", "c") and ("a", "bc") apart. The same request on the same
    server seed always gets the same slate (invariant 5: reproducible decisions).
    """
    h = _key_prefix(server_seed, surface).copy()  # the hash state after the first two parts (fixed per surface)
    part = request_id.encode()
    h.update(len(part).to_bytes(4, "little") + part)  # one update of the concatenation: the same hash
    return int.from_bytes(h.digest(), "little")


@functools.lru_cache(maxsize=256)
def _key_prefix(server_seed: int, surface: str) -> hashlib.blake2b:
    """blake2b after (server_seed, surface), length-prefixed as :func:`draw_key` hashes them; copied, never updated."""
    h = hashlib.blake2b(digest_size=8)
    for part in (str(server_seed & _MASK64).encode(), surface.encode()):
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    return h


def _splitmix64(x: int) -> int:
    z = x & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def uniform(key: int, slot: int) -> float:
    """u_slot in [0, 1): the top 53 bits of splitmix64(key + (slot + 1)·golden).

    A counter-based stream: slot k's draw does not depend on how many draws came before, and no
    generator object is built per request.
    """
    return (_splitmix64(key + (slot + 1) * _GOLDEN) >> 11) * _TWO_POW_MINUS_53


# --- slates -------------------------------------------------------------------------------------


class SlotDraw(NamedTuple):
    """One slot: the drawn candidate index (into the request), its exact conditional propensity.

    Immutable, compared by value, built positionally: a NamedTuple is built in ~0.3 µs against ~1 µs for the frozen
    dataclass it was (whose ``__init__`` goes through ``object.__setattr__`` per field), and Rank builds one per
    slot. Its field ``index`` hides ``tuple.index``: nothing searches a slot."""

    index: int
    propensity: float
    explored: bool
    exploration_mass: float
    draw: float
    greedy_index: int


@dataclass(frozen=True)
class SlateDraw:
    slots: tuple[SlotDraw, ...]
    slate_propensity: float

    @property
    def indices(self) -> list[int]:
        return [s.index for s in self.slots]


def _slot_distribution(explorer: Explorer, remaining_scores: np.ndarray) -> tuple[np.ndarray, int, float]:
    """(p, greedy position, exploration mass) for one slot over the remaining candidates."""
    p, g = _distribution_and_greedy(explorer, remaining_scores)
    return p, g, float(1.0 - p[g])


def _inverse_cdf(p: np.ndarray, u: float) -> int:
    """Smallest i with cdf[i] > u·cdf[-1]; never an item with p = 0.

    side="right" skips zero-probability items: if p[i] = 0 then cdf[i] = cdf[i−1] and i−1 would be
    found first. If rounding makes u·total reach total, fall back to the last positive item.
    """
    cdf = p.cumsum().tolist()
    # bisect over the same doubles, not ndarray.searchsorted: searchsorted releases the GIL, and on a serving
    # process that hands it to the log writer thread, whose event build then lands inside this decision
    # (measured: Rank p50 in process 0.96 -> 0.64 ms at 100 candidates, slate 10). Same index, bit for bit; the
    # target u·total is the same double whether cdf[-1] is a numpy or a Python float (one IEEE multiplication).
    i = bisect.bisect_right(cdf, u * cdf[-1])
    if i >= p.size or p[i] <= 0.0:
        i = int(np.flatnonzero(p > 0.0)[-1])
    return i


def _remove(a: np.ndarray, i: int) -> np.ndarray:
    # Order-preserving removal (ties must keep breaking by the lowest original index); slicing and
    # concatenating is several times cheaper than np.delete for short arrays.
    return np.concatenate((a[:i], a[i + 1 :]))


def _check_slate_size(n: int, slate_size: int) -> int:
    if slate_size <= 0:
        raise ValueError(f"slate_size: must be positive, got {slate_size}")
    return min(slate_size, n)


@runtime_checkable
class SlotFeasibility(Protocol):
    """Which candidates may fill the next slot given those placed before it (``recsys_rl.shield.RequestShield``).

    ``pinned_at``: the candidate that takes slot k outright (propensity 1, not drawn), or None; ``mask``: which of
    ``remaining`` (candidate indices not yet placed) the explorer may draw from at the next slot. An implementation
    may also offer ``feasible(placed) -> indices``, the same array as ``remaining[mask(remaining, placed)]`` with
    ``remaining`` the unplaced indices in ascending order, computed in one step (the shield's fast path).
    """

    def pinned_at(self, slot: int, placed: Sequence[int]) -> int | None: ...

    def mask(self, remaining: np.ndarray, placed: Sequence[int]) -> np.ndarray: ...


_NO_INDICES = np.empty(0, dtype=np.int64)


def _feasible_at(feasibility: SlotFeasibility, n: int, k: int, placed: list[int]) -> tuple[int | None, np.ndarray]:
    """(pinned candidate, empty) or (None, feasible candidate indices, ascending) at slot k: the ONE place sampling
    and replay learn the feasible set, so both see the same array and the same probabilities."""
    pin = feasibility.pinned_at(k, placed)
    if pin is not None:
        return pin, _NO_INDICES
    fast = getattr(feasibility, "feasible", None)
    if fast is not None:
        return None, fast(placed)
    unplaced = np.ones(n, dtype=bool)
    unplaced[placed] = False
    remaining = unplaced.nonzero()[0]
    return None, remaining[feasibility.mask(remaining, placed)]


def _sample_feasible(scores: np.ndarray, k_max: int, explorer: Explorer, draw_key: int,
                     feasibility: SlotFeasibility) -> SlateDraw:
    placed: list[int] = []
    slots: list[SlotDraw] = []
    slate_propensity = 1.0
    epsilon = _epsilon_parameters(explorer)
    for k in range(k_max):
        u = uniform(draw_key, k)
        pin, feasible = _feasible_at(feasibility, scores.size, k, placed)
        if pin is not None:
            slots.append(SlotDraw(pin, 1.0, False, 0.0, u, pin))
            index = pin
        else:
            if feasible.size == 0:
                break  # nothing feasible at this slot: a shorter slate (docs/shield.md)
            if epsilon is not None:  # the epsilon-greedy fast path's slot (see above), over the feasible set
                g = int(scores[feasible].argmax())
                q, pg = _epsilon_values(feasible.size, *epsilon)
                i = _epsilon_slot(feasible.size, g, u, q, pg)
                propensity, mass = (pg if i == g else q), 1.0 - pg
            else:
                p, g, mass = _slot_distribution(explorer, scores[feasible])
                i = _inverse_cdf(p, u)
                propensity = float(p[i])
            index = int(feasible[i])
            slots.append(SlotDraw(index, propensity, i != g, mass, u, int(feasible[g])))
            slate_propensity *= propensity
        placed.append(index)
    return SlateDraw(tuple(slots), slate_propensity)


# --- the epsilon-greedy fast path ---------------------------------------------------------------
# Epsilon-greedy (capped or not, and cap 0's Greedy) gives every non-greedy candidate the same probability q and the
# greedy one pg, both functions of the number of candidates only: the slot's distribution is fixed by (n, greedy
# position), not by the scores. So a slate is drawn without building a distribution per slot: the greedy comes from
# one stable sort, the CDF below the greedy is a cached prefix sum of q, and the CDF's total (one sequential sum, the
# same cumsum the reference takes) is cached per (q, pg, n, greedy position). The doubles are those of
# ``distribution_and_greedy`` + :func:`_inverse_cdf` (same IEEE operations in the same order), so the slate and every
# propensity are bit for bit the generic loop's, and :func:`slate_propensities` (replay) stays the reference
# (tests/recsys_rl/serving/test_exploration_fast.py checks both over many seeded requests).

# Entries per cache, each cleared whole when full (recomputed on demand). Totals are one float each (~10 MB at most);
# a prefix is a list of n floats, one per (q, n): a few per candidate count and cap in force, so 1024 of them hold
# every count up to 1000 at one cap (~16 MB at most at 1000 candidates).
_TOTALS_MAX = 1 << 16
_PREFIX_MAX = 1 << 10
_TOTALS: dict[tuple[float, float, int, int], float] = {}
_PREFIX: dict[tuple[float, int], list[float]] = {}


def _epsilon_parameters(explorer: Explorer) -> tuple[float, float | None] | None:
    """(epsilon, cap or None) when ``explorer`` is one whose slot distribution :func:`_epsilon_values` reproduces
    (exact types: a subclass may override the arithmetic); epsilon -1.0 stands for Greedy; None otherwise."""
    kind = type(explorer)
    if kind is CappedExplorer:
        assert isinstance(explorer, CappedExplorer)
        if explorer.cap <= 0.0:
            return -1.0, None
        inner = explorer.inner
        if type(inner) is Greedy:  # its exploration mass is 0: never above the cap
            return -1.0, None
        return (inner.epsilon, explorer.cap) if type(inner) is EpsilonGreedy else None  # type: ignore[attr-defined]
    if kind is EpsilonGreedy:
        return explorer.epsilon, None  # type: ignore[attr-defined]
    if kind is Greedy:
        return -1.0, None
    return None


def _epsilon_values(n: int, epsilon: float, cap: float | None) -> tuple[float, float]:
    """(q, pg): a non-greedy candidate's and the greedy one's probability among ``n``, as the explorers compute."""
    if epsilon < 0.0:  # Greedy (also CappedExplorer at cap 0)
        return 0.0, 1.0
    q = epsilon / n  # EpsilonGreedy: p.fill(epsilon / n); p[g] += 1 - epsilon
    pg = q + (1.0 - epsilon)
    if cap is not None:  # CappedExplorer: mass = 1 - p[g]; above the cap, p * (cap / mass) and p[g] = 1 - cap
        mass = 1.0 - pg
        if mass > cap:
            q = q * (cap / mass)
            pg = 1.0 - cap
    return q, pg


@functools.lru_cache(maxsize=1024)
def _epsilon_values_per_slot(n: int, k_max: int, epsilon: float, cap: float | None) -> tuple[tuple[float, float], ...]:
    """:func:`_epsilon_values` of slots 0 .. k_max - 1 over ``n`` candidates (n - k left at slot k): the same for
    every request of a surface with the same candidate count and slate size, so computed once for them."""
    return tuple(_epsilon_values(n - k, epsilon, cap) for k in range(k_max))


def _epsilon_cdf(q: float, pg: float, n: int, g: int) -> np.ndarray:
    p = np.full(n, q)
    p[g] = pg
    return p.cumsum()


def _epsilon_slot(n: int, g: int, u: float, q: float, pg: float) -> int:
    """:func:`_inverse_cdf` of the distribution (q everywhere, pg at g) over ``n`` candidates, for uniform ``u``."""
    key = (q, pg, n, g)
    total = _TOTALS.get(key)
    if total is None:
        if len(_TOTALS) >= _TOTALS_MAX:
            _TOTALS.clear()
        total = _TOTALS[key] = float(_epsilon_cdf(q, pg, n, g)[-1])
    prefix = _PREFIX.get((q, n))
    if prefix is None:
        if len(_PREFIX) >= _PREFIX_MAX:
            _PREFIX.clear()
        prefix = _PREFIX[(q, n)] = np.full(n, q).cumsum().tolist()  # the CDF before the greedy position
    target = u * total
    i = bisect.bisect_right(prefix, target, 0, g)
    if i == g:
        c = prefix[g - 1] + pg if g else pg  # cdf[g]
        if not c > target:  # past the greedy (at cap 0.1, ~1 slot in 10): the CDF on from g, as cumsum adds it
            i = g + 1
            c += q
            while i < n and not c > target:
                i += 1
                c += q
    if i >= n or (pg if i == g else q) <= 0.0:
        i = n - 1 if q > 0.0 else g  # the last candidate with positive probability
    return i


def _sample_epsilon(scores: np.ndarray, k_max: int, epsilon: float, cap: float | None, draw_key: int) -> SlateDraw:
    """:func:`sample_slate` without a shield for an explorer :func:`_epsilon_parameters` accepts."""
    n = scores.size
    # The greedy of the remaining candidates is the first unplaced one in this order: argmax's rule (the highest
    # score, ties to the lowest index) is a stable descending sort's (Python's sort stays stable with reverse=True).
    # Not ndarray.argsort: numpy sorts release the GIL, which hands it to the log writer's thread mid-decision
    # (measured: ~190 µs per Rank in process, against ~9 µs for this sort).
    values = scores.tolist()
    order = sorted(range(n), key=values.__getitem__, reverse=True)
    remaining = list(range(n))  # unplaced candidate indices, ascending: the generic loop's remaining array
    placed: set[int] = set()
    head = 0
    slots: list[SlotDraw] = []
    slate_propensity = 1.0
    bisect_left, slot, mask = bisect.bisect_left, _epsilon_slot, _MASK64
    values_per_slot = _epsilon_values_per_slot(n, k_max, epsilon, cap)
    for k in range(k_max):
        while order[head] in placed:
            head += 1
        greedy = order[head]
        g = bisect_left(remaining, greedy)
        q, pg = values_per_slot[k]
        z = (draw_key + (k + 1) * _GOLDEN) & mask  # uniform(draw_key, k), inlined (called once per slot)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        u = ((z ^ (z >> 31)) >> 11) * _TWO_POW_MINUS_53
        i = slot(n - k, g, u, q, pg)
        propensity = pg if i == g else q
        index = remaining[i]
        slots.append(SlotDraw(index, propensity, i != g, 1.0 - pg, u, greedy))
        slate_propensity *= propensity
        del remaining[i]
        placed.add(index)
    return SlateDraw(tuple(slots), slate_propensity)


def sample_slate(scores: np.ndarray, slate_size: int, explorer: Explorer, *, draw_key: int,
                 feasibility: SlotFeasibility | None = None) -> SlateDraw:
    """Draw min(slate_size, n) distinct candidates slot by slot (see the module docstring).

    ``feasibility`` (the shield): each slot draws only among the candidates feasible given the earlier slots, the
    propensity is the exact probability within that set, and the cap bounds that set's exploration mass; a pinned
    slot has propensity 1. The slate is shorter when a slot has no feasible candidate.
    """
    scores = _check_scores(scores)
    if not np.isfinite(scores).all():
        raise ValueError("scores: must be finite")
    k_max = _check_slate_size(scores.size, slate_size)
    if feasibility is not None:
        return _sample_feasible(scores, k_max, explorer, draw_key, feasibility)
    epsilon = _epsilon_parameters(explorer)
    if epsilon is not None:
        return _sample_epsilon(scores, k_max, *epsilon, draw_key)
    # The arithmetic of _slot_distribution and _inverse_cdf on the same arrays (what slate_propensities replays), with
    # less per-slot overhead: the explorer's method looked up once, the candidates left as a list, and the remaining
    # scores cut down rather than gathered again (the same doubles either way).
    distribution = _fast_distribution(explorer)
    remaining = list(range(scores.size))
    remaining_scores = scores
    slots: list[SlotDraw] = []
    slate_propensity = 1.0
    for k in range(k_max):
        p, g = distribution(remaining_scores)
        u = uniform(draw_key, k)
        i = _inverse_cdf(p, u)
        propensity = float(p[i])
        slots.append(SlotDraw(index=remaining[i], propensity=propensity, explored=i != g,
                              exploration_mass=float(1.0 - p[g]), draw=u, greedy_index=remaining[g]))
        slate_propensity *= propensity
        if k + 1 < k_max:
            del remaining[i]
            remaining_scores = _remove(remaining_scores, i)
    return SlateDraw(tuple(slots), slate_propensity)


def slate_propensities(scores: np.ndarray, slate_indices: Sequence[int], explorer: Explorer, *,
                       feasibility: SlotFeasibility | None = None) -> np.ndarray:
    """P(slate_indices[k] at slot k | slate_indices[:k]) under ``explorer``, for every k.

    Identical (bit for bit) to the propensities :func:`sample_slate` logs for the same slate and feasibility; an
    item infeasible at its slot (or another item where one is pinned) has probability 0.
    """
    scores = _check_scores(scores)
    if feasibility is not None:
        return _propensities_feasible(scores, slate_indices, explorer, feasibility)
    remaining = np.arange(scores.size)
    remaining_scores = scores
    out = np.empty(len(slate_indices))
    for k, index in enumerate(slate_indices):
        where = np.flatnonzero(remaining == index)
        if where.size == 0:
            raise ValueError(f"slate_indices[{k}]: {index} is out of range or repeated")
        i = int(where[0])
        p, _, _ = _slot_distribution(explorer, remaining_scores)
        out[k] = p[i]
        remaining = _remove(remaining, i)
        remaining_scores = scores[remaining]
    return out


def _propensities_feasible(scores: np.ndarray, slate_indices: Sequence[int], explorer: Explorer,
                           feasibility: SlotFeasibility) -> np.ndarray:
    placed: list[int] = []
    out = np.empty(len(slate_indices))
    for k, index in enumerate(slate_indices):
        index = int(index)
        if not 0 <= index < scores.size or index in placed:
            raise ValueError(f"slate_indices[{k}]: {index} is out of range or repeated")
        pin, feasible = _feasible_at(feasibility, scores.size, k, placed)
        if pin is not None:
            out[k] = 1.0 if index == pin else 0.0
        else:
            where = np.flatnonzero(feasible == index)
            if where.size == 0:
                out[k] = 0.0
            else:
                p, _, _ = _slot_distribution(explorer, scores[feasible])
                out[k] = p[int(where[0])]
        placed.append(index)
    return out
