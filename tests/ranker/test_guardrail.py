"""The canary guardrail over a real server: a learned policy clearly worse than the baseline is reverted by itself.

A deterministic-odds host: each page view offers 5 fresh items (ids never repeat, no features, so the learned
policy cannot learn the host's taste) with random baseline scores; the user clicks the served top item with
probability 0.6 when it is the baseline's top item and 0.1 otherwise. Control (baseline) earns 0.6 per decision,
the canary about 0.6·(1/5) + 0.1·(4/5) = 0.2: Δ ≈ −0.4. Half of the users are in the canary.
"""

from __future__ import annotations

import random
import time

from recsys_rl.config import parse_config
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

# Stated bound: the revert comes within this many canary decisions (measured: ~100-200 at Δ ≈ −0.4).
MAX_CANARY_DECISIONS = 600
CONFIG = parse_config({"surfaces": {"feed": {
    "reward": {"attribution_window_seconds": 0.2},
    "rollout": {"stage": "canary", "canary_share": 0.5, "min_decisions": 50, "tolerance": 0.01, "alpha": 0.05},
}}})


def _page_view(rng: random.Random, n: int) -> pb.RankRequest:
    request = pb.RankRequest(request_id=f"r{n}", surface="feed", user_id=f"u{rng.randrange(100_000)}", slate_size=1)
    for k in range(5):
        request.candidates.add(item_id=f"i{n}-{k}", baseline_score=rng.random())
    return request


def test_worse_canary_is_reverted_automatically_and_hosts_keep_getting_slates(start_server) -> None:
    running = start_server(CONFIG)
    admin = running.admin  # the admin listener, as the session's operator
    rng = random.Random(17)
    canary_served = control_served = 0
    reverted_at: int | None = None
    deadline = time.monotonic() + 45
    n = 0
    while time.monotonic() < deadline:
        n += 1
        request = _page_view(rng, n)
        response = running.stub.Rank(request, timeout=5)  # raises on any non-OK status: every Rank must be OK
        assert len(response.slate) == 1
        if response.serving_mode == pb.SERVING_MODE_CANARY:
            canary_served += 1
        elif response.serving_mode == pb.SERVING_MODE_BASELINE:
            control_served += 1
        top = max(request.candidates, key=lambda c: c.baseline_score).item_id
        if rng.random() < (0.6 if response.slate[0].item_id == top else 0.1):
            running.stub.ReportOutcome(pb.ReportOutcomeRequest(
                event_id=response.event_id, item_id=response.slate[0].item_id, outcome="click", value=1.0), timeout=5)
        if n % 25 == 0:
            state = admin.GetRollout(admin_pb.GetRolloutRequest(surface="feed", history_limit=10), timeout=5)
            if state.stage == admin_pb.ROLLOUT_STAGE_BASELINE:
                reverted_at = canary_served
                break
        time.sleep(0.002)  # host pacing: ~a few hundred page views per second, so windows close as traffic flows
    assert reverted_at is not None, f"not reverted after {canary_served} canary decisions"
    assert reverted_at <= MAX_CANARY_DECISIONS, reverted_at
    assert control_served > 0
    assert state.reverted
    revert = [c for c in state.history if c.automatic]
    assert revert and revert[-1].new_stage == admin_pb.ROLLOUT_STAGE_BASELINE
    assert "guardrail failed" in revert[-1].reason and "difference_high" in revert[-1].evidence_json
    # serving goes on at stage baseline: every later page view gets the baseline by choice
    for m in range(n + 1, n + 51):
        request = _page_view(rng, m)
        response = running.stub.Rank(request, timeout=5)
        assert response.serving_mode == pb.SERVING_MODE_BASELINE
        assert response.slate[0].item_id == max(request.candidates, key=lambda c: c.baseline_score).item_id


def test_guardrail_state_is_reported_while_collecting(start_server) -> None:
    running = start_server(CONFIG)
    admin = running.admin  # the admin listener, as the session's operator
    rng = random.Random(3)
    for n in range(40):
        running.stub.Rank(_page_view(rng, n), timeout=5)
    state = admin.GetRollout(admin_pb.GetRolloutRequest(surface="feed"), timeout=5)
    assert state.stage == admin_pb.ROLLOUT_STAGE_CANARY
    assert state.guardrail.status == "collecting" and state.guardrail.alpha == 0.05
    assert state.guardrail.tolerance == 0.01


def test_a_holding_canary_advances_by_itself_with_auto_advance(start_server) -> None:
    """auto_advance over a real server: equal click odds in both arms, so the guardrail holds; after min_decisions
    per arm the surface takes the ramp's next step (here: live), audited as automatic with the guardrail's checks."""
    config = parse_config({"surfaces": {"feed": {
        "reward": {"attribution_window_seconds": 0.2},
        "rollout": {"stage": "canary", "canary_share": 0.5, "min_decisions": 50, "tolerance": 0.2,
                    "auto_advance": True, "ramp": [0.5, 1.0]},
    }}})
    running = start_server(config)
    admin = running.admin  # the admin listener, as the session's operator
    rng = random.Random(23)
    deadline = time.monotonic() + 45
    n = 0
    state = admin.GetRollout(admin_pb.GetRolloutRequest(surface="feed"), timeout=5)
    while time.monotonic() < deadline and state.stage != admin_pb.ROLLOUT_STAGE_LIVE:
        n += 1
        response = running.stub.Rank(_page_view(rng, n), timeout=5)
        if rng.random() < 0.3:  # the same odds whoever served: an A/A canary
            running.stub.ReportOutcome(pb.ReportOutcomeRequest(
                event_id=response.event_id, item_id=response.slate[0].item_id, outcome="click", value=1.0), timeout=5)
        if n % 25 == 0:
            state = admin.GetRollout(admin_pb.GetRolloutRequest(surface="feed", history_limit=10), timeout=5)
        time.sleep(0.002)  # host pacing, as above
    assert state.stage == admin_pb.ROLLOUT_STAGE_LIVE, f"still {state.stage} after {n} page views"
    advance = [c for c in state.history if c.automatic and c.new_stage == admin_pb.ROLLOUT_STAGE_LIVE]
    assert advance and "canary_decisions" in advance[-1].evidence_json and not state.reverted
    assert running.stub.Rank(_page_view(rng, n + 1), timeout=5).serving_mode == pb.SERVING_MODE_LEARNED
