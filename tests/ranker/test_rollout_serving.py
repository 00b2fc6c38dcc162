"""Each rollout stage served over a real server: who serves, with which mode, and what is logged.

Stages come from the surface's TOML settings (``SurfaceConfig.rollout``); the model is untrained and does not
learn (learn = false), so every difference between stages comes from the rollout, not from learning.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from scipy import stats

from evaluators.replay.run import replay
from logging_schema.reader import read_log
from logging_schema.tables import load_tables
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.rollout.assignment import in_canary
from recsys_rl.rollout.config import RolloutConfig
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.learner import OnlineLearner
from recsys_rl.serving.registry import ModelRegistry
from recsys_rl.serving.decision import baseline_order
from tests.conftest import RunningServer
from tests.helpers import make_request

N_CANDIDATES = 8
SLATE = 3
CAP = 0.3
# Baseline scores in a fixed shuffled order, so "the baseline's order" is not just the candidates' order.
BASELINE = np.random.default_rng(0).permutation(N_CANDIDATES).astype(float)
BASELINE_ITEMS = [f"item-{i}" for i in baseline_order(BASELINE, SLATE)]


def config(stage: str, *, canary_share: float = 0.3, learn: bool = False) -> ServiceConfig:
    # A generous decision budget: a loaded machine must not turn a learned draw into a deadline fallback here.
    surface = SurfaceConfig(exploration_cap=CAP, exploration=ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.6),
                            model=ModelConfig(learn=learn), decision_budget_ms=60_000,
                            rollout=RolloutConfig(stage=stage, canary_share=canary_share))
    return ServiceConfig(surfaces={"default": surface}, seed=11)


def request(request_id: str, user_id: str = "u1") -> pb.RankRequest:
    built = make_request(N_CANDIDATES, SLATE, request_id=request_id, user_id=user_id)
    for candidate, score in zip(built.candidates, BASELINE):
        candidate.baseline_score = score
    return built


def slate(response: pb.RankResponse) -> list[str]:
    return [item.item_id for item in response.slate]


def test_live_is_unchanged(start_server) -> None:
    running = start_server(config("live"))
    response = running.stub.Rank(request("r1"), timeout=10)
    assert response.serving_mode == pb.SERVING_MODE_LEARNED
    running.stop()
    (event,) = read_log(running.data_dir / "logs").decisions
    assert event.rollout_stage == "live" and not event.HasField("shadow")
    assert event.serving_mode == pb.SERVING_MODE_LEARNED


def test_baseline_serves_exactly_the_baseline_by_choice_and_still_refuses_invalid_requests(start_server) -> None:
    running = start_server(config("baseline"))
    for i in range(50):
        response = running.stub.Rank(request(f"r{i}"), timeout=10)
        assert response.serving_mode == pb.SERVING_MODE_BASELINE
        assert slate(response) == BASELINE_ITEMS
        assert [item.propensity for item in response.slate] == [1.0] * SLATE and response.slate_propensity == 1.0
    bad = request("bad")
    bad.candidates[2].features.numeric["price"] = float("nan")  # the scorer's check, though nothing is scored
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.Rank(bad, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidates[2].features.numeric" in caught.value.details()
    running.stop()
    events = read_log(running.data_dir / "logs").decisions
    assert len(events) == 50
    assert {(e.rollout_stage, e.serving_mode, e.fallback_reason) for e in events} == {
        ("baseline", pb.SERVING_MODE_BASELINE, "")}


N_SHADOW = 3_000


def test_shadow_serves_the_baseline_and_logs_exact_shadow_propensities(start_server) -> None:
    running = start_server(config("shadow"))
    for i in range(N_SHADOW):  # identical requests but for request_id, hence the shadow's draw
        response = running.stub.Rank(request(f"req-{i}"), timeout=10)
        assert response.serving_mode == pb.SERVING_MODE_SHADOW
        assert slate(response) == BASELINE_ITEMS and response.slate_propensity == 1.0
    shadow_stats = running.server.service.shadow_stats("default")  # type: ignore[attr-defined]
    running.stop()
    events = read_log(running.data_dir / "logs").decisions
    assert len(events) == N_SHADOW
    shadows = [e.shadow for e in events]
    assert all(e.rollout_stage == "shadow" and e.HasField("shadow") for e in events)
    assert all(s.fallback_reason == "" and len(s.slate) == SLATE and s.latency_micros > 0 for s in shadows)
    assert {s.exploration.cap for s in shadows} == {CAP}
    assert max(slot.exploration_mass for s in shadows for slot in s.slate) <= CAP + 1e-12
    # E[1/p(drawn)] at slot k = items left; tolerance 5 standard errors.
    inverse = np.array([[1.0 / slot.propensity for slot in s.slate] for s in shadows])
    for k in range(SLATE):
        mean, sem = inverse[:, k].mean(), inverse[:, k].std(ddof=1) / np.sqrt(N_SHADOW)
        assert abs(mean - (N_CANDIDATES - k)) <= 5 * sem + 1e-9, (k, mean, sem)
    # The shadow's top slot: empirical frequencies match the logged propensities (chi-square, alpha = 0.001).
    top_counts: Counter[str] = Counter(s.slate[0].item_id for s in shadows)
    top_propensity = {s.slate[0].item_id: s.slate[0].propensity for s in shadows}
    assert sum(top_propensity.values()) == pytest.approx(1.0, abs=1e-9)
    items = sorted(top_counts)
    observed = np.array([top_counts[i] for i in items], dtype=float)
    assert stats.chisquare(observed, np.array([top_propensity[i] for i in items]) * N_SHADOW).pvalue > 1e-3
    # The statistics rollout show reports agree with the log.
    top1 = np.mean([s.slate[0].item_id == BASELINE_ITEMS[0] for s in shadows])
    overlap = np.mean([len({slot.item_id for slot in s.slate} & set(BASELINE_ITEMS)) / SLATE for s in shadows])
    assert shadow_stats.decisions == N_SHADOW and shadow_stats.fallback_rate == 0.0
    assert shadow_stats.top1_match == pytest.approx(top1) and shadow_stats.overlap_at_k == pytest.approx(overlap)
    assert shadow_stats.added_latency_p50_ms > 0


def test_shadow_draws_what_live_would_have_served(start_server) -> None:
    """Same model, seed and request_id: the shadow slate is the slate live serving draws (same draw key)."""
    shadow = start_server(config("shadow"))
    live = start_server(config("live"))
    for i in range(30):
        shadow.stub.Rank(request(f"r{i}"), timeout=10)
        live.stub.Rank(request(f"r{i}"), timeout=10)
    shadow.stop()
    live.stop()
    shadows = {e.request_id: e.shadow for e in read_log(shadow.data_dir / "logs").decisions}
    for event in read_log(live.data_dir / "logs").decisions:
        assert [(s.item_id, s.propensity) for s in shadows[event.request_id].slate] == [
            (s.item_id, s.propensity) for s in event.slate]
        assert shadows[event.request_id].exploration.draw_key == event.exploration.draw_key


def test_learner_learns_the_served_baseline_not_the_shadow(start_server, tmp_path: Path) -> None:
    """The learner's update is the logged slate with its logged propensity: at shadow, the baseline's, p = 1.

    ``OnlineLearner`` does not look at the serving mode: every logged slot is one IPS label with its logged
    propensity, so SHADOW and BASELINE decisions are learned as served (the shadow's slate reached no user).
    """
    running = start_server(config("shadow"))
    running.stub.Rank(request("r1"), timeout=10)
    running.stop()
    (event,) = read_log(running.data_dir / "logs").decisions
    assert [s.item_id for s in event.slate] == BASELINE_ITEMS and {s.propensity for s in event.slate} == {1.0}
    surface = config("shadow", learn=True).surfaces["default"]
    bandit = VWBandit(surface.model.vw_args)
    learner = OnlineLearner(surface, bandit, ModelRegistry(tmp_path / "models"), parent_version="v0")
    learner.consume(events_pb2.LogRecord(decision=event))
    click = events_pb2.OutcomeEvent(event_id=event.event_id, item_id=BASELINE_ITEMS[0], outcome="click", value=1.0,
                                    surface="default", attributed=True)
    click.occurred_at.FromNanoseconds(event.served_at.ToNanoseconds() + 1_000_000)
    learner.consume(events_pb2.LogRecord(outcome=click))
    learner.step(event.served_at.ToSeconds() + surface.reward.attribution_window_seconds + 60)
    assert (learner.stats.learned_decisions, learner.stats.updates, learner.stats.outcomes_used) == (1, SLATE, 1)
    for _ in range(30):  # more of the same: the served top item, clicked, becomes the model's best
        assert bandit.learn(event, [1.0] + [0.0] * (SLATE - 1)) == SLATE
    scores = bandit.score(request("r2"))
    assert f"item-{int(np.argmax(scores))}" == BASELINE_ITEMS[0]


N_USERS = 1_500
SHARE = 0.3


def _arms(running: RunningServer, users: list[str], prefix: str) -> dict[str, int]:
    return {user: running.stub.Rank(request(f"{prefix}-{user}", user), timeout=10).serving_mode for user in users}


def test_canary_assignment_is_sticky_and_its_share_is_right(start_server, tmp_path: Path) -> None:
    users = [f"user-{i}" for i in range(N_USERS)]
    data_dir = tmp_path / "canary"
    running = start_server(config("canary", canary_share=SHARE), data_dir=data_dir)
    first = _arms(running, users, "a")
    again = _arms(running, users[:300], "b")  # other requests of the same users
    control = running.stub.Rank(request("c-anon", ""), timeout=10)
    running.stop()
    restarted = start_server(config("canary", canary_share=SHARE), data_dir=data_dir)
    after_restart = _arms(restarted, users[:300], "c")
    restarted.stop()
    assert set(first.values()) == {pb.SERVING_MODE_CANARY, pb.SERVING_MODE_BASELINE}
    assert all(again[u] == first[u] for u in again) and all(after_restart[u] == first[u] for u in after_restart)
    # The arm is the stable hash's, and the realised share is binomial around canary_share (4 sd).
    assert all((first[u] == pb.SERVING_MODE_CANARY) == in_canary("default", u, SHARE) for u in users)
    realised = sum(mode == pb.SERVING_MODE_CANARY for mode in first.values()) / N_USERS
    assert abs(realised - SHARE) <= 4 * np.sqrt(SHARE * (1 - SHARE) / N_USERS), realised
    assert control.serving_mode == pb.SERVING_MODE_BASELINE  # an empty user_id is control
    events = read_log(data_dir / "logs").decisions
    assert {e.rollout_stage for e in events} == {"canary"}
    for event in events:
        if event.serving_mode == pb.SERVING_MODE_BASELINE:  # control: exactly the baseline, p = 1
            assert [s.item_id for s in event.slate] == BASELINE_ITEMS and event.slate_propensity == 1.0
        else:
            assert event.serving_mode == pb.SERVING_MODE_CANARY
            assert max(s.exploration_mass for s in event.slate) <= CAP + 1e-12
    assert any(e.serving_mode == pb.SERVING_MODE_CANARY and e.slate_propensity < 1.0 for e in events)


def test_replay_logged_reproduces_propensities_on_a_mixed_stage_log(start_server, tmp_path: Path) -> None:
    data_dir = tmp_path / "mixed"
    # One data dir, a restart per stage; each configuration moves the surface back (a forward one is not applied).
    for stage in ("live", "canary", "shadow", "baseline"):
        running = start_server(config(stage, canary_share=0.5), data_dir=data_dir)
        for i in range(40):
            running.stub.Rank(request(f"{stage}-{i}", f"user-{i}"), timeout=10)
        running.stop()
    events = read_log(data_dir / "logs").decisions
    assert Counter(e.rollout_stage for e in events) == {"live": 40, "shadow": 40, "canary": 40, "baseline": 40}
    assert {pb.SERVING_MODE_LEARNED, pb.SERVING_MODE_SHADOW, pb.SERVING_MODE_CANARY,
            pb.SERVING_MODE_BASELINE} <= {e.serving_mode for e in events}
    # The export carries the stage: a canary's control users (canary, baseline) apart from a stage-baseline surface.
    decisions = load_tables(data_dir).decisions
    assert set(decisions.select("rollout_stage", "serving_mode").unique().rows()) == {
        ("live", "learned"), ("shadow", "shadow"), ("canary", "canary"), ("canary", "baseline"),
        ("baseline", "baseline")}
    table = replay(data_dir, "logged", progress=False)
    assert table.height == len(events) * SLATE
    assert (table["target_pscore"] == table["pscore"]).all()
    assert (table["slate_target_pscore"] == table["slate_pscore"]).all()
