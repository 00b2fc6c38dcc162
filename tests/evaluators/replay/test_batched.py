"""The batched capped ε-greedy propensities are the per-decision serving explorer's, bit for bit (ties included)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.replay.batched import PendingBatch, batchable, epsilon_greedy_propensities
from recsys_rl.config import ExplorationConfig
from recsys_rl.serving.exploration import make_explorer, slate_propensities


@pytest.mark.parametrize("epsilon,cap", [(0.1, 0.1), (0.3, 0.2), (0.5, 0.0), (0.0, 0.3), (1.0, 1.0), (0.9, 0.05)])
def test_batched_equals_slate_propensities(epsilon: float, cap: float) -> None:
    rng = np.random.default_rng(7)
    d, n, k = 300, 12, 5
    scores = rng.integers(0, 4, size=(d, n)).astype(np.float64) * 0.25  # many ties: the lowest index wins
    scores[: d // 2] += rng.normal(size=(d // 2, n))
    logged = np.stack([rng.permutation(n)[:k] for _ in range(d)])
    for row in range(0, d, 3):  # some slates follow the greedy order, so the greedy branch is exercised
        logged[row] = np.lexsort((np.arange(n), -scores[row]))[:k]
    explorer = make_explorer(ExplorationConfig(epsilon=epsilon), cap)
    assert batchable(explorer) == (epsilon, cap)
    got = epsilon_greedy_propensities(scores, logged, np.full(d, epsilon), np.full(d, cap))
    expected = np.stack([slate_propensities(scores[i], logged[i].tolist(), explorer) for i in range(d)])
    assert got.tobytes() == expected.tobytes()  # bit for bit

    pending, out = PendingBatch(), np.full(d * k + 3, -1.0)
    for i in range(d):
        pending.add(3 + i * k, scores[i], logged[i].tolist(), epsilon, cap)
    pending.fill(out)
    assert out[3:].tobytes() == expected.ravel().tobytes() and (out[:3] == -1.0).all()


def test_other_explorers_are_not_batched() -> None:
    assert batchable(make_explorer(ExplorationConfig(algorithm="softmax", temperature=1.0), 0.2)) is None
    assert batchable(make_explorer(ExplorationConfig(algorithm="squarecb", gamma=10.0), 0.2)) is None
