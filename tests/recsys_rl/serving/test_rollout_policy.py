"""SurfacePolicy at each rollout stage, without a server: who is scored, modes, and the shadow in the event."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_rl.config import ExplorationConfig, ModelConfig, SurfaceConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.rollout.config import RolloutState, Stage
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.decision import baseline_order
from recsys_rl.serving.policy import SurfacePolicy, decision_to_event
from tests.recsys_rl.serving.test_policy import BrokenBandit, make_request

ARGS = ModelConfig().vw_args


class CountingBandit(VWBandit):
    scored = 0

    def score(self, request: pb.RankRequest) -> np.ndarray:
        self.scored += 1
        return super().score(request)


def policy(bandit: VWBandit) -> SurfacePolicy:
    surface = SurfaceConfig(name="home", exploration_cap=0.5,
                            exploration=ExplorationConfig(algorithm="softmax", temperature=0.5))
    return SurfacePolicy(surface, bandit, "v1", server_seed=7)


def test_baseline_stage_checks_the_request_but_does_not_score() -> None:
    bandit = CountingBandit(ARGS)
    request = make_request()
    decision = policy(bandit).rank(request, rollout=RolloutState(stage=Stage.BASELINE))
    assert bandit.scored == 0
    assert decision.serving_mode == pb.SERVING_MODE_BASELINE and decision.fallback_reason == ""
    assert decision.rollout_stage == "baseline" and decision.slate_propensity == 1.0
    baseline = np.array([c.baseline_score for c in request.candidates])
    assert [s.candidate_index for s in decision.slots] == baseline_order(baseline, request.slate_size).tolist()
    request.context.numeric["hour"] = float("inf")
    with pytest.raises(InvalidInput, match="context.numeric"):
        policy(bandit).rank(request, rollout=RolloutState(stage=Stage.BASELINE))


def test_a_broken_model_does_not_matter_at_baseline_and_is_the_shadows_fallback() -> None:
    broken = policy(BrokenBandit(ARGS))
    assert broken.rank(make_request(), rollout=RolloutState(stage=Stage.BASELINE)).serving_mode == (
        pb.SERVING_MODE_BASELINE)
    shadowed = broken.rank(make_request(), rollout=RolloutState(stage=Stage.SHADOW))
    assert shadowed.serving_mode == pb.SERVING_MODE_SHADOW and shadowed.fallback_reason == ""
    assert shadowed.shadow is not None and shadowed.shadow.fallback_reason.startswith("model_error")
    assert shadowed.shadow.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK


def test_shadow_is_logged_beside_the_served_baseline() -> None:
    request = make_request()
    decision = policy(VWBandit(ARGS)).rank(request, rollout=RolloutState(stage=Stage.SHADOW))
    live = policy(VWBandit(ARGS)).rank(request)
    event = decision_to_event(request, decision, event_id="e1", served_at_ns=1, window_s=5.0, latency_us=10)
    assert event.serving_mode == pb.SERVING_MODE_SHADOW and event.rollout_stage == "shadow"
    assert [s.propensity for s in event.slate] == [1.0] * request.slate_size
    assert [(s.candidate_index, s.propensity, s.draw) for s in event.shadow.slate] == [
        (s.candidate_index, s.propensity, s.draw) for s in live.slots]
    assert event.shadow.slate_propensity == live.slate_propensity
    assert event.shadow.policy_version == "v1" and event.shadow.exploration.cap == 0.5
    assert event.shadow.latency_micros == decision.shadow_latency_us
    assert not event.candidate_scores and list(event.shadow.candidate_scores) == live.candidate_scores  # baseline: none


def test_canary_and_control_by_user() -> None:
    surface_policy = policy(VWBandit(ARGS))
    everyone = RolloutState(stage=Stage.CANARY, canary_share=1.0)
    nobody = RolloutState(stage=Stage.CANARY, canary_share=0.0)
    assert surface_policy.rank(make_request(), rollout=everyone).serving_mode == pb.SERVING_MODE_CANARY
    assert surface_policy.rank(make_request(), rollout=nobody).serving_mode == pb.SERVING_MODE_BASELINE
    anonymous = make_request()
    anonymous.user_id = ""
    assert surface_policy.rank(anonymous, rollout=everyone).serving_mode == pb.SERVING_MODE_BASELINE


def test_log_unavailable_is_a_fallback_at_every_stage() -> None:
    surface_policy = policy(VWBandit(ARGS))
    for stage in Stage:
        decision = surface_policy.rank(make_request(), serve_baseline="log_unavailable",
                                       rollout=RolloutState(stage=stage, canary_share=1.0))
        assert decision.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK and decision.rollout_stage == stage.value
