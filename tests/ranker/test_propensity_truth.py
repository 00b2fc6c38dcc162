"""Invariant 1 end to end: logged propensities are the probabilities the served items were drawn with.

Repeated identical requests (only request_id, hence the draw, differs), cap > 0, no learning. Two checks:
E[1/p] at slot k equals the number of candidates left (every remaining item has positive probability), and the
top slot's empirical item frequencies match the logged propensities (chi-square, alpha = 0.001, fixed seed).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from logging_schema.reader import read_log
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from tests.helpers import make_request

N_REQUESTS = 3_000
N_CANDIDATES = 8
SLATE = 3

EXPLORERS = {
    "epsilon_greedy capped": (ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.6), 0.3),
    "softmax capped": (ExplorationConfig(algorithm="softmax", temperature=1.0), 0.5),
    "squarecb": (ExplorationConfig(algorithm="squarecb", gamma=10.0), 1.0),
}


@pytest.mark.parametrize("name", list(EXPLORERS))
def test_logged_propensities_match_empirical_frequencies(start_server, name: str) -> None:
    exploration, cap = EXPLORERS[name]
    # A generous decision budget: this test is about the learned policy's draws, and a loaded CI machine must not
    # turn a slow request into a (correctly logged, but here unwanted) baseline fallback.
    surface = SurfaceConfig(exploration_cap=cap, exploration=exploration, model=ModelConfig(learn=False),
                            decision_budget_ms=60_000)
    running = start_server(ServiceConfig(surfaces={"default": surface}, seed=11))
    inverse = np.zeros((N_REQUESTS, SLATE))
    top_counts: Counter[str] = Counter()
    top_propensity: dict[str, float] = {}
    for i in range(N_REQUESTS):
        response = running.stub.Rank(make_request(N_CANDIDATES, SLATE, request_id=f"req-{i}"), timeout=10)
        inverse[i] = [1.0 / item.propensity for item in response.slate]
        assert response.serving_mode == pb.SERVING_MODE_LEARNED
        top = response.slate[0]
        top_counts[top.item_id] += 1
        # Identical requests: an item's logged top-slot propensity must not depend on the draw.
        assert top_propensity.setdefault(top.item_id, top.propensity) == pytest.approx(top.propensity, abs=1e-12)
        assert max(item.propensity for item in response.slate) <= 1.0
    # E[1/p(drawn)] = Σ_a p(a)/p(a) = items left. Tolerance: 5 standard errors of the mean.
    for k in range(SLATE):
        mean = inverse[:, k].mean()
        sem = inverse[:, k].std(ddof=1) / np.sqrt(N_REQUESTS)
        assert abs(mean - (N_CANDIDATES - k)) <= 5 * sem + 1e-9, (k, mean, sem)
    # The drawn top items account for all the probability mass (no unlogged alternatives).
    assert sum(top_propensity.values()) == pytest.approx(1.0, abs=1e-9)
    items = sorted(top_counts)
    observed = np.array([top_counts[i] for i in items], dtype=float)
    expected = np.array([top_propensity[i] for i in items]) * N_REQUESTS
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # The log says the same as the responses, and the mass used never exceeds the cap.
    running.stop()
    events = read_log(running.data_dir / "logs").decisions
    assert len(events) == N_REQUESTS
    assert max(slot.exploration_mass for e in events for slot in e.slate) <= cap + 1e-12
