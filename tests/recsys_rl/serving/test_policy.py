"""SurfacePolicy: learned decisions, fallbacks, swaps, caps, and the logged event."""

from __future__ import annotations

import math
import time
import threading

import numpy as np
import pytest

from recsys_rl.serving.bandit import VWBandit
from recsys_rl.config import ExplorationConfig, ModelConfig, SurfaceConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.serving.exploration import make_explorer, slate_propensities
from recsys_rl.serving.decision import LongTermInput
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.rollout.config import RolloutState, Stage
from recsys_rl.serving.candidates import CandidateView
from recsys_rl.serving.policy import NoLongTermValue, SurfacePolicy, decision_record, decision_to_event
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

ARGS = ModelConfig().vw_args


def make_request(n: int = 8, slate_size: int = 3, request_id: str = "r-1") -> pb.RankRequest:
    request = pb.RankRequest(request_id=request_id, surface="home", user_id="u-1", slate_size=slate_size)
    request.context.categorical["device"] = "ios"
    for j in range(n):
        c = request.candidates.add(item_id=f"item-{j}", baseline_score=float((j * 7) % n) / n)
        c.features.numeric["price"] = float(j)
    return request


class BrokenBandit(VWBandit):
    """A model that fails at scoring time, like a corrupted or incompatible model would."""

    def score(self, request: pb.RankRequest) -> np.ndarray:
        raise RuntimeError("weights corrupted")


class FixedValue:
    def __init__(self, values: np.ndarray) -> None:
        self._values = values

    def evaluate(self, request: pb.RankRequest, logged: LongTermInput | None = None) -> tuple[np.ndarray, LongTermInput]:
        return self._values, LongTermInput("fixed-v1")


def surface(**kw: object) -> SurfaceConfig:
    return SurfaceConfig(name="home", exploration=ExplorationConfig(algorithm="softmax", temperature=0.5), **kw)  # type: ignore[arg-type]


def test_learned_decision_is_reproducible_and_its_propensities_replay() -> None:
    policy = SurfacePolicy(surface(exploration_cap=0.5), VWBandit(ARGS), "v1", server_seed=42)
    request = make_request()
    decision = policy.rank(request)
    assert decision.serving_mode == pb.SERVING_MODE_LEARNED and decision.fallback_reason == ""
    assert decision == policy.rank(request)  # same seed material, same slate
    scores = VWBandit(ARGS).score(request)
    replay = slate_propensities(scores, [s.candidate_index for s in decision.slots], make_explorer(policy.surface.exploration, 0.5))
    assert replay.tolist() == [s.propensity for s in decision.slots]
    assert decision.slate_propensity == pytest.approx(math.prod(s.propensity for s in decision.slots))
    assert all(s.exploration_mass <= 0.5 + 1e-12 for s in decision.slots)
    assert [s.item_id for s in decision.slots] == [request.candidates[s.candidate_index].item_id for s in decision.slots]


def test_broken_model_falls_back_to_baseline() -> None:
    policy = SurfacePolicy(surface(), BrokenBandit(ARGS), "v1", server_seed=1)
    request = make_request()
    decision = policy.rank(request)
    assert decision.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK
    assert decision.fallback_reason.startswith("model_error: RuntimeError: weights corrupted")
    baseline = [c.baseline_score for c in request.candidates]
    expected = sorted(range(len(baseline)), key=lambda i: (-baseline[i], i))[:3]
    assert [s.candidate_index for s in decision.slots] == expected
    assert all(s.propensity == 1.0 and not s.explored for s in decision.slots) and decision.slate_propensity == 1.0


def test_exhausted_budget_falls_back_and_ties_break_by_index() -> None:
    policy = SurfacePolicy(surface(), VWBandit(ARGS), "v1", server_seed=1)
    request = make_request(n=4, slate_size=4)
    for c in request.candidates:
        c.baseline_score = 0.5
    decision = policy.rank(request, deadline=time.perf_counter())
    assert decision.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK
    assert decision.fallback_reason.startswith("deadline")
    assert [s.candidate_index for s in decision.slots] == [0, 1, 2, 3]
    assert policy.rank(request, deadline=None).serving_mode == pb.SERVING_MODE_LEARNED


def test_invalid_input_propagates_and_is_not_a_fallback() -> None:
    policy = SurfacePolicy(surface(), VWBandit(ARGS), "v1", server_seed=1)
    request = make_request()
    request.candidates[2].features.numeric["price"] = math.nan
    with pytest.raises(InvalidInput, match=r'candidates\[2\].features.numeric\["price"\]'):
        policy.rank(request)
    with pytest.raises(InvalidInput, match="slate_size"):
        policy.rank(make_request(slate_size=0))
    bad = make_request()
    bad.candidates[1].baseline_score = math.inf
    with pytest.raises(InvalidInput, match=r"candidates\[1\].baseline_score"):
        policy.rank(bad)


def test_cap_zero_is_greedy_and_swap_changes_version() -> None:
    policy = SurfacePolicy(surface(exploration_cap=1.0), VWBandit(ARGS), "v1", server_seed=1)
    policy.set_cap(0.0)
    request = make_request()
    decisions = [policy.rank(make_request(request_id=str(i))) for i in range(50)]
    assert all(not s.explored and s.propensity == 1.0 for d in decisions for s in d.slots)
    assert decisions[0].cap == 0.0
    policy.swap_model(VWBandit(ARGS), "v2")
    assert policy.rank(request).policy_version == "v2"
    with pytest.raises(ValueError, match="cap"):
        policy.set_cap(1.5)


def test_long_term_value_enters_the_score() -> None:
    n = 5
    values = np.zeros(n)
    values[3] = 10.0
    cfg = surface(exploration_cap=0.0, model=ModelConfig(long_term_weight=0.5))
    policy = SurfacePolicy(cfg, VWBandit(ARGS), "v1", server_seed=1, long_term=FixedValue(values))
    decision = policy.rank(make_request(n=n, slate_size=1))
    assert decision.slots[0].candidate_index == 3 and decision.slots[0].score == pytest.approx(5.0)
    assert NoLongTermValue().evaluate(make_request(n=n))[0].tolist() == [0.0] * n
    broken = SurfacePolicy(cfg, VWBandit(ARGS), "v1", server_seed=1, long_term=FixedValue(np.zeros(2)))
    fallback = broken.rank(make_request(n=n))
    assert fallback.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK and fallback.candidate_scores is None
    assert decision.candidate_scores is not None and decision.candidate_scores[3] == pytest.approx(5.0)  # λ·Q in


def test_concurrent_rank_and_swap() -> None:
    policy = SurfacePolicy(surface(), VWBandit(ARGS), "v0", server_seed=1)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(100):
                d = policy.rank(make_request(request_id=f"{offset}-{i}"))
                assert d.serving_mode == pb.SERVING_MODE_LEARNED
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for v in range(1, 20):
        policy.swap_model(VWBandit(ARGS), f"v{v}")
    for t in threads:
        t.join()
    assert errors == [] and policy.policy_version == "v19"


def test_decision_to_event_carries_everything() -> None:
    policy = SurfacePolicy(surface(exploration_cap=0.3), VWBandit(ARGS), "v7", server_seed=2**64 - 1)
    request = make_request()
    decision = policy.rank(request)
    event = decision_to_event(request, decision, event_id="ev-1", served_at_ns=1_700_000_000_123_456_789, window_s=5.0, latency_us=812)
    assert event.event_id == "ev-1" and event.request_id == "r-1" and event.surface == "home" and event.user_id == "u-1"
    assert event.served_at.ToNanoseconds() == 1_700_000_000_123_456_789
    assert event.context == request.context and list(event.candidates) == list(request.candidates)
    assert event.slate_size == 3 and event.policy_version == "v7" and event.serving_mode == pb.SERVING_MODE_LEARNED
    assert event.attribution_window_seconds == 5.0 and event.latency_micros == 812
    assert event.exploration.algorithm == "softmax" and event.exploration.temperature == 0.5
    assert event.exploration.cap == 0.3 and event.exploration.server_seed == 2**64 - 1
    assert event.exploration.draw_key == decision.draw_key
    assert [(s.position, s.candidate_index, s.propensity, s.draw) for s in event.slate] == [
        (k, s.candidate_index, s.propensity, s.draw) for k, s in enumerate(decision.slots)
    ]
    assert event.slate_propensity == decision.slate_propensity
    # The scores drawn from, one per candidate (what-if replay at another cap needs no re-scoring).
    assert list(event.candidate_scores) == VWBandit(ARGS).score(request).tolist()
    # The logged event is enough to learn from.
    assert VWBandit(ARGS).learn(event, [1.0, 0.0, 0.0]) == 3


@pytest.mark.parametrize("stage", [Stage.LIVE, Stage.SHADOW])
def test_the_logged_record_is_the_event_built_from_the_candidates_bytes(stage: Stage) -> None:
    """What the server logs (decision_record: the candidates as CandidateView read them, as bytes) parses as the
    LogRecord of decision_to_event, field for field: slate, scores, shadow, long-term input and its history."""
    policy = SurfacePolicy(surface(exploration_cap=0.3), VWBandit(ARGS), "v7", server_seed=3,
                           long_term=FixedValue(np.linspace(0.0, 1.0, 8)))
    request = make_request()
    request.context.tags.append("evening")
    request.candidates[2].embedding.extend([0.25, -1.5])
    request.candidates[3].baseline_score = 0.0  # not serialized: the candidate's bytes end elsewhere
    decision = policy.rank(request, rollout=RolloutState(stage=stage))
    history = (pb.Candidate(item_id="seen-1", baseline_score=2.0), pb.Candidate(item_id="seen-2"))
    decision.long_term, decision.long_term_weight = LongTermInput("ltv-3", history), 0.5
    fields = dict(event_id="ev-1", served_at_ns=1_700_000_000_123_456_789, window_s=5.0, latency_us=812)
    expected = events_pb2.LogRecord(decision=decision_to_event(request, decision, **fields))
    logged = decision_record(request, decision, CandidateView(request), **fields).SerializeToString()
    assert events_pb2.LogRecord.FromString(logged) == expected
    assert expected.decision.HasField("shadow") == (stage is Stage.SHADOW)
    scored = expected.decision.shadow if stage is Stage.SHADOW else expected.decision  # the learned policy's draw
    assert len(expected.decision.long_term.history) == 2 and len(scored.candidate_scores) == 8
