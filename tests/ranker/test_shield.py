"""The shield over a real server: exact propensities with a diversity rule and a pin, blocked items never served
in any mode, the event carries the shield version and the rules fired, replay reproduces logged propensities."""

from __future__ import annotations

import numpy as np
import pytest

from logging_schema.reader import read_log
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.rollout.config import RolloutConfig
from recsys_rl.serving.decision import ConstantScorer, DecisionPolicy, target_propensities
from recsys_rl.serving.exploration import make_explorer
from recsys_rl.shield import parse_shield
from tests.helpers import make_request

N_REQUESTS = 2_000
N, SLATE = 8, 3
RULES = parse_shield({"blocked_items": ["item-1"], "max_per_value": {"creator": 1}, "pinned": {"item-6": 2}})


def _request(request_id: str) -> pb.RankRequest:
    request = make_request(N, SLATE, request_id=request_id)
    for i, c in enumerate(request.candidates):
        c.features.categorical["creator"] = f"c{i % 4}"  # 0,4 share c0; 1,5 c1; 2,6 c2; 3,7 c3
    return request


def test_propensity_truth_with_diversity_and_pin(start_server) -> None:
    exploration = ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.6)
    surface = SurfaceConfig(exploration_cap=0.5, exploration=exploration, model=ModelConfig(learn=False),
                            decision_budget_ms=60_000, shield=RULES)
    running = start_server(ServiceConfig(surfaces={"default": surface}, seed=5))
    inverse = np.zeros((N_REQUESTS, 2))
    ht = np.zeros(N)  # Horvitz-Thompson: Σ 1{item at slot 0}/p should count the requests when p is exact
    feasible_counts = np.zeros((N_REQUESTS, 2))
    for r in range(N_REQUESTS):
        response = running.stub.Rank(_request(f"req-{r}"), timeout=10)
        ids = [int(s.item_id.split("-")[1]) for s in response.slate]
        assert response.serving_mode == pb.SERVING_MODE_LEARNED and 1 not in ids
        assert len({i % 4 for i in ids}) == len(ids)  # at most one per creator
        if 6 not in ids[:2] and (2 not in ids[:2]):
            assert ids[2] == 6 and response.slate[2].propensity == 1.0  # the pin, when feasible, not drawn
        for k in range(2):
            inverse[r, k] = 1.0 / response.slate[k].propensity
            placed = ids[:k]
            # feasible: not blocked, not pinned (item-6 is reserved for slot 2), creator not yet used
            feasible_counts[r, k] = sum(1 for i in range(N) if i not in (1, 6) and i % 4 not in {p % 4 for p in placed})
        ht[ids[0]] += 1.0 / response.slate[0].propensity
    # E[1/p] at slot k = the number of feasible candidates; tolerance 5 standard errors.
    for k in range(2):
        diff = inverse[:, k] - feasible_counts[:, k]
        assert abs(diff.mean()) <= 5 * diff.std(ddof=1) / np.sqrt(N_REQUESTS) + 1e-9, k
    # HT: each feasible top item's estimated count of requests is N_REQUESTS (5 standard errors, p >= 0.05).
    for i in (0, 2, 3, 4, 5, 7):
        assert abs(ht[i] - N_REQUESTS) <= 5 * np.sqrt(N_REQUESTS * (1 / 0.05)), (i, ht[i])
    assert ht[1] == 0 and ht[6] == 0
    running.stop()
    events = read_log(running.data_dir / "logs").decisions
    assert len(events) == N_REQUESTS and all(e.shield_version == RULES.version for e in events)
    assert all("blocked_items:item-1" in e.shield_rules_fired for e in events)
    # Replay: the same feasibility through target_propensities reproduces every logged propensity bit for bit
    # (the model never learned: learn=False, so a constant scorer stands for it).
    policy = DecisionPolicy(surface="default", policy_version="x", scorer=ConstantScorer(),
                            explorer=make_explorer(exploration, 0.5), exploration=exploration, cap=0.5, shield=RULES)
    for e in events[:300]:
        request = pb.RankRequest(request_id=e.request_id, slate_size=e.slate_size, candidates=e.candidates)
        p, _ = target_propensities(policy, request, [s.candidate_index for s in e.slate])
        assert p.tolist() == [s.propensity for s in e.slate]


@pytest.mark.parametrize("stage,budget_ms", [("live", 1e-6), ("baseline", 25.0), ("shadow", 25.0),
                                             ("canary", 25.0), ("live", 60_000.0)])
def test_blocked_never_served(start_server, stage: str, budget_ms: float) -> None:
    shield = parse_shield({"blocked_items": ["item-0", "item-3"], "blocked_values": {"topic": ["t1"]}})
    surface = SurfaceConfig(exploration_cap=1.0, model=ModelConfig(learn=False), decision_budget_ms=budget_ms,
                            shield=shield, rollout=RolloutConfig(stage=stage, canary_share=0.5))
    running = start_server(ServiceConfig(surfaces={"default": surface}, seed=3))
    modes = set()
    for r in range(600):
        response = running.stub.Rank(make_request(12, 5, request_id=f"r{r}", user_id=f"u{r}"), timeout=10)
        modes.add(response.serving_mode)
        served = {s.item_id for s in response.slate}
        assert not served & {"item-0", "item-3", "item-1", "item-5", "item-9"}, (stage, served)
        assert len(response.slate) == 5
    if budget_ms < 1:
        assert modes == {pb.SERVING_MODE_BASELINE_FALLBACK}
    running.stop()
    for e in read_log(running.data_dir / "logs").decisions:
        for slate in (e.slate, e.shadow.slate):
            assert not {s.item_id for s in slate} & {"item-0", "item-3", "item-1", "item-5", "item-9"}


def test_no_feasible_candidates_is_failed_precondition(start_server) -> None:
    import grpc

    shield = parse_shield({"blocked_values": {"topic": ["t0", "t1", "t2"]}, "min_feasible": 4})
    surface = SurfaceConfig(model=ModelConfig(learn=False), shield=shield)
    running = start_server(ServiceConfig(surfaces={"default": surface}, seed=3))
    with pytest.raises(grpc.RpcError) as err:
        running.stub.Rank(make_request(12, 5), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "min_feasible 4" in err.value.details()
