"""Target propensities of many logged decisions at once, from their logged scores (what-ifs at another cap).

:func:`recsys_rl.serving.exploration.slate_propensities` walks one decision slot by slot (~15 µs of numpy calls per
slot); here the capped ε-greedy explorer — the default, and the one whose what-ifs (``logged@cap=X``) analysts ask
about — is evaluated for a whole batch of decisions per slot. The arithmetic is the serving explorer's, operation
for operation (``EpsilonGreedy`` then ``CappedExplorer``), so the result is bit for bit what the per-decision path
gives; ``tests/evaluators/replay/test_batched.py`` checks it, ties included. Other explorers and shielded decisions
(whose feasibility depends on each request's features) keep the per-decision path.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from recsys_rl.serving.exploration import CappedExplorer, EpsilonGreedy, Explorer


def batchable(explorer: Explorer) -> tuple[float, float] | None:
    """(ε, cap) when ``explorer`` is a capped ε-greedy explorer this module reproduces exactly, else None."""
    if isinstance(explorer, CappedExplorer) and isinstance(explorer.inner, EpsilonGreedy):
        return explorer.inner.epsilon, explorer.cap
    return None


def epsilon_greedy_propensities(scores: np.ndarray, logged: np.ndarray, epsilon: np.ndarray,
                                cap: np.ndarray) -> np.ndarray:
    """P(logged[d, k] at slot k | logged[d, :k]) for decisions d: scores (D, n), logged (D, K) distinct indices,
    epsilon and cap (D,). As serving: the greedy item is the highest remaining score, ties to the lowest index."""
    rows = np.arange(scores.shape[0])
    n = scores.shape[1]
    removed = np.zeros(scores.shape, dtype=bool)
    out = np.empty(logged.shape)
    greedy_only = cap <= 0.0
    with np.errstate(divide="ignore", invalid="ignore"):  # cap / mass where mass = 0 is computed, never used
        for k in range(logged.shape[1]):
            g = np.where(removed, -np.inf, scores).argmax(axis=1)  # first maximum: the lowest index among ties
            index = logged[:, k]
            is_greedy = g == index
            # EpsilonGreedy over m remaining: p.fill(ε/m); p[g] += 1 − ε.
            other = epsilon / (n - k)
            top = other + (1.0 - epsilon)
            # CappedExplorer: mass = 1 − p[g]; above the cap, p *= cap/mass and p[g] = 1 − cap.
            mass = 1.0 - top
            capped = mass > cap
            other = np.where(capped, other * (cap / mass), other)
            top = np.where(capped, 1.0 - cap, top)
            p = np.where(is_greedy, top, other)
            out[:, k] = np.where(greedy_only, np.where(is_greedy, 1.0, 0.0), p)
            removed[rows, index] = True
    return out


@dataclass
class PendingBatch:
    """Decisions deferred to one batched computation: each fills ``len(logged)`` values at its offset."""

    groups: dict[tuple[int, int], list[tuple[int, np.ndarray, list[int], float, float]]] = field(
        default_factory=lambda: defaultdict(list))

    def add(self, offset: int, scores: np.ndarray, logged: list[int], epsilon: float, cap: float) -> None:
        self.groups[(scores.size, len(logged))].append((offset, scores, logged, epsilon, cap))

    def fill(self, out: np.ndarray) -> None:
        """Write every deferred decision's propensities into ``out`` (the chunk's flat target_pscore column)."""
        for (_, k), items in self.groups.items():
            offsets = np.array([item[0] for item in items])
            p = epsilon_greedy_propensities(np.stack([item[1] for item in items]),
                                            np.array([item[2] for item in items], dtype=np.int64).reshape(-1, k),
                                            np.array([item[3] for item in items]), np.array([item[4] for item in items]))
            out[(offsets[:, None] + np.arange(k)).ravel()] = p.ravel()
        self.groups.clear()


__all__ = ["PendingBatch", "batchable", "epsilon_greedy_propensities"]
