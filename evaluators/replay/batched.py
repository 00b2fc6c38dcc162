"""Target propensities of many logged decisions at once, from their logged scores (what-ifs at another cap).

:func:`recsys_rl.serving.exploration.slate_propensities` walks one decision slot by slot (~15 µs of numpy calls per
slot); here the capped ε-greedy explorer — the default, and the one whose what-ifs (``logged@cap=X``) analysts ask
about — is evaluated for a whole batch of decisions per slot. The arithmetic is the serving explorer's, operation
for operation (``EpsilonGreedy`` then ``CappedExplorer``), so the result is bit for bit what the per-decision path
gives; ``tests/evaluators/replay/test_batched.py`` checks it, ties included. Other explorers and shielded decisions
(whose feasibility depends on each request's features) keep the per-decision path.
"""

from __future__ import annotations

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


class PendingBatch:
    """Decisions deferred to one batched computation: each fills ``len(logged)`` values at its offset.

    Scores are kept as the raw little-endian doubles (a ReplayRecord's packed ``candidate_scores``, or an array's
    bytes) and become one (decisions × candidates) array per group at :meth:`fill`; so is their finiteness check,
    which a decision's caller may leave to the batch (``key``: what to hand back for a decision whose scores are
    not all finite, so the caller re-scores it instead).
    """

    def __init__(self) -> None:
        # (candidates, slots) -> [offsets, scores, logged (flat), epsilons, caps, keys]
        self.groups: dict[tuple[int, int], tuple[list[int], list[bytes], list[int], list[float], list[float],
                                                 list[object]]] = {}

    def add(self, offset: int, scores: np.ndarray | bytes, logged: list[int], epsilon: float, cap: float,
            key: object = None) -> None:
        raw = scores if isinstance(scores, bytes) else np.asarray(scores, dtype="<f8").tobytes()
        group = self.groups.get((len(raw) // 8, len(logged)))
        if group is None:
            group = self.groups[(len(raw) // 8, len(logged))] = ([], [], [], [], [], [])
        offsets, all_scores, all_logged, epsilons, caps, keys = group
        offsets.append(offset)
        all_scores.append(raw)
        all_logged.extend(logged)
        epsilons.append(epsilon)
        caps.append(cap)
        keys.append(key)

    def fill(self, out: np.ndarray) -> list[object]:
        """Write every deferred decision's propensities into ``out`` (the chunk's flat target_pscore column); returns
        the keys of those whose scores are not all finite (their values are left as they are)."""
        not_finite: list[object] = []
        for (n, k), (offsets, all_scores, all_logged, epsilons, caps, keys) in self.groups.items():
            scores = np.frombuffer(b"".join(all_scores), dtype="<f8").reshape(-1, n).astype(np.float64, copy=False)
            where = np.array(offsets)
            finite = np.isfinite(scores).all(axis=1)
            if not finite.all():
                not_finite += [keys[d] for d in np.flatnonzero(~finite)]
            p = epsilon_greedy_propensities(scores[finite], np.array(all_logged, dtype=np.int64).reshape(-1, k)[finite],
                                            np.array(epsilons)[finite], np.array(caps)[finite])
            out[(where[finite][:, None] + np.arange(k)).ravel()] = p.ravel()
        self.groups.clear()
        return not_finite


__all__ = ["PendingBatch", "batchable", "epsilon_greedy_propensities"]
