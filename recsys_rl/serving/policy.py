"""A surface's serving policy: the mutable holder of its decision state (model version, cap), deciding through the
one decision path (:mod:`recsys_rl.serving.decision`).

A model swap or a cap change replaces the frozen :class:`DecisionPolicy` snapshot in one attribute store, so a
request in flight finishes with the state it started with and the next one uses the new state.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

from google.protobuf.message import Message

from logging_schema.views import WireRecord
from recsys_rl.config import SurfaceConfig
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.rollout.assignment import in_canary
from recsys_rl.rollout.config import RolloutState, Stage
from recsys_rl.serving.decision import (
    BaselineScorer, Decision, DecisionPolicy, DecisionSlot, LongTermInput, LongTermValue, NoLongTermValue, Scorer,
    decide, decide_baseline,
)
from recsys_rl.serving.exploration import draw_key, make_explorer
from recsys_rl.serving.candidates import CandidateView
from recsys_rl.serving.requests import validate_rank_request
from recsys_rl.shield.rules import ShieldRules


_LIVE = RolloutState(stage=Stage.LIVE)


class SurfacePolicy:
    """Ranks requests for one surface. Thread-safe: the bandit serialises its own VW use."""

    def __init__(
        self,
        surface: SurfaceConfig,
        bandit: VWBandit,
        policy_version: str,
        *,
        server_seed: int,
        long_term: LongTermValue = NoLongTermValue(),
        baseline: Scorer = BaselineScorer(),
        baseline_version: str = "",
    ) -> None:
        """``baseline``/``baseline_version``: a learned baseline (recsys_rl.baseline) that orders every baseline
        slate; default the host's baseline_score."""
        self.surface = surface
        self.server_seed = server_seed
        self._lock = threading.Lock()  # serialises writers of the snapshot; readers take it as one attribute
        self._state = DecisionPolicy(
            surface=surface.name, policy_version=policy_version, scorer=bandit,
            explorer=make_explorer(surface.exploration, surface.exploration_cap), exploration=surface.exploration,
            cap=surface.exploration_cap, server_seed=server_seed, long_term=long_term,
            long_term_weight=surface.model.long_term_weight, shield=surface.shield, baseline=baseline,
            baseline_version=baseline_version,
        )

    @property
    def state(self) -> DecisionPolicy:
        """The decision state in force (frozen)."""
        return self._state

    @property
    def policy_version(self) -> str:
        return self._state.policy_version

    @property
    def cap(self) -> float:
        return self._state.cap

    @property
    def bandit(self) -> VWBandit:
        return self._state.scorer  # type: ignore[return-value]

    @property
    def long_term(self) -> LongTermValue:
        return self._state.long_term

    def swap_model(self, bandit: VWBandit, policy_version: str) -> None:
        """Atomically replace the model: a rank in flight finishes on the old one, the next uses the new."""
        with self._lock:
            self._state = replace(self._state, scorer=bandit, policy_version=policy_version)

    def hot_items(self, limit: int = 10_000) -> list[tuple[bytes, str, str]]:
        """The serving cache's most recently used items, to warm a replacement model before ``swap_model``."""
        return self.bandit.hot_items(limit)

    def set_cap(self, cap: float) -> None:
        """The cap in force from the next rank on (lowering is always allowed; the gate is the caller's)."""
        if not (0.0 <= cap <= 1.0):
            raise ValueError(f"cap: must be in [0, 1], got {cap}")
        explorer = make_explorer(self.surface.exploration, cap)
        with self._lock:
            self._state = replace(self._state, explorer=explorer, cap=cap)

    def set_shield(self, rules: ShieldRules) -> None:
        """The shield rules in force from the next rank on (validated and audited by the caller's store)."""
        with self._lock:
            self._state = replace(self._state, shield=rules)

    def rank(self, request: pb.RankRequest, *, deadline: float | None = None,
             candidates: CandidateView | None = None, serve_baseline: str = "", rollout: RolloutState = _LIVE,
             late: str = "") -> Decision:
        """Decide a slate for ``request`` through the decision path, as the rollout stage says.

        ``deadline``: a ``time.perf_counter()`` instant past which the baseline serves (None: no deadline).
        ``candidates``: the request's candidates from ``validate_rank_request`` when the caller validated already
        (read once, shared by the shield, the item cache and the slots; the baseline scores are theirs).
        ``serve_baseline``: a reason to serve the baseline whatever the model says (e.g. "log_unavailable").
        ``rollout``: the surface's rollout in force. live: the learned policy (SERVING_MODE_LEARNED); baseline:
        the baseline (SERVING_MODE_BASELINE, the model is not scored); canary: canary users (stable hash,
        ``recsys_rl.rollout.assignment``) get the learned policy (SERVING_MODE_CANARY), control users the
        baseline (SERVING_MODE_BASELINE); shadow: the baseline is served (SERVING_MODE_SHADOW) and the learned
        policy decides the same request with the draw key live serving would use, in ``Decision.shadow``.
        ``late``: the request has no time left to score (e.g. "queued: waited 31.2 ms"): wherever the learned
        policy would be scored (live, a canary user, the shadow) the baseline serves at once with this reason
        (SERVING_MODE_BASELINE_FALLBACK, the model not scored; ``serve_baseline``'s reason first when both are set);
        a baseline by the rollout's choice is unchanged.
        """
        if candidates is None:
            candidates = validate_rank_request(request, max_candidates=self.surface.max_candidates)
        baseline = candidates.baseline
        state = self._state  # one snapshot for the whole request, shadow included
        key = draw_key(self.server_seed, self.surface.name, request.request_id)
        stage = rollout.stage
        canary_user = stage is Stage.CANARY and in_canary(self.surface.name, request.user_id, rollout.canary_share)
        if late and (serve_baseline or stage in (Stage.LIVE, Stage.SHADOW) or canary_user):
            decision = decide_baseline(state, request, baseline, draw_key=key, candidates=candidates,
                                       mode=pb.SERVING_MODE_BASELINE_FALLBACK, reason=serve_baseline or late)
        elif serve_baseline or stage is Stage.LIVE:
            decision = decide(state, request, baseline, draw_key=key, candidates=candidates, deadline=deadline,
                              serve_baseline=serve_baseline)
        elif stage is Stage.CANARY:
            if canary_user:
                decision = decide(state, request, baseline, draw_key=key, candidates=candidates, deadline=deadline,
                                  mode=pb.SERVING_MODE_CANARY)
            else:
                decision = decide_baseline(state, request, baseline, draw_key=key, candidates=candidates,
                                           mode=pb.SERVING_MODE_BASELINE)
        elif stage is Stage.SHADOW:
            # The shadow first: it validates the request (InvalidInput before anything is served) and its time is
            # what shadowing adds to Rank.
            started_ns = time.perf_counter_ns()
            shadow = decide(state, request, baseline, draw_key=key, candidates=candidates, deadline=deadline)
            shadow_latency_us = (time.perf_counter_ns() - started_ns) // 1000
            decision = decide_baseline(state, request, baseline, draw_key=key, candidates=candidates,
                                       mode=pb.SERVING_MODE_SHADOW, check=False)
            decision.shadow, decision.shadow_latency_us = shadow, shadow_latency_us
            decision.long_term = shadow.long_term  # the event's long-term input is the shadow's, for its replay
        else:
            decision = decide_baseline(state, request, baseline, draw_key=key, candidates=candidates,
                                       mode=pb.SERVING_MODE_BASELINE)
        decision.rollout_stage = stage.value
        return decision


def decision_to_event(
    request: pb.RankRequest,
    decision: Decision,
    *,
    event_id: str,
    served_at_ns: int,
    window_s: float,
    latency_us: int,
) -> events_pb2.DecisionEvent:
    """The logged DecisionEvent: the full request (context, candidates), the slate, and seed material."""
    event = events_pb2.DecisionEvent()
    _fill_event(event, request, decision, event_id=event_id, served_at_ns=served_at_ns, window_s=window_s,
                latency_us=latency_us)
    event.context.CopyFrom(request.context)
    event.candidates.extend(request.candidates)
    if decision.long_term is not None:
        event.long_term.history.extend(decision.long_term.history)
    return event


def decision_record(
    request: pb.RankRequest,
    decision: Decision,
    candidates: CandidateView,
    *,
    event_id: str,
    served_at_ns: int,
    window_s: float,
    latency_us: int,
) -> Message:
    """The LogRecord of :func:`decision_to_event`'s event, as the log writer's thread builds it: a
    ``logging_schema.views.WireRecord`` whose candidates are the bytes ``candidates`` read them as (it parses as
    ``LogRecord(decision=decision_to_event(...))``). ~4x cheaper to build: no Candidate message is built."""
    record = WireRecord()
    event = record.decision
    _fill_event(event, request, decision, event_id=event_id, served_at_ns=served_at_ns, window_s=window_s,
                latency_us=latency_us)
    event.context = request.context.SerializeToString()
    event.candidates.extend(candidates.raw)
    event.catalog_version = candidates.catalog_version
    if decision.long_term is not None:
        event.long_term.history.extend([c.SerializeToString() for c in decision.long_term.history])
    return record


def _fill_event(event: Any, request: pb.RankRequest, decision: Decision, *, event_id: str, served_at_ns: int,
                window_s: float, latency_us: int) -> None:
    """Every field of ``event`` but context, candidates and long-term history: a DecisionEvent or its WireRecord
    view (the same fields, so one filler writes both and they cannot drift apart)."""
    event.event_id = event_id
    event.request_id = request.request_id
    event.surface = decision.surface
    event.user_id = request.user_id
    event.slate_size = request.slate_size
    event.slate_propensity = decision.slate_propensity
    event.policy_version = decision.policy_version
    event.serving_mode = decision.serving_mode
    event.fallback_reason = decision.fallback_reason
    event.attribution_window_seconds = window_s
    event.latency_micros = int(latency_us)
    event.served_at.FromNanoseconds(served_at_ns)
    event.shield_rules_fired.extend(decision.shield_rules_fired)
    event.shield_version = decision.shield_version
    event.baseline_version = decision.baseline_version
    if decision.long_term is not None:
        event.long_term.model_version = decision.long_term.model_version
        event.long_term.weight = decision.long_term_weight
    event.rollout_stage = decision.rollout_stage
    _fill_exploration(event.exploration, decision)
    _add_slots(event.slate, decision.slots)
    if decision.retrieval is not None:
        decision.retrieval.fill(event.retrieval)
    if decision.candidate_scores is not None:  # one extend of n doubles: what-if replay without re-scoring
        event.candidate_scores.extend(decision.candidate_scores)
    shadow = decision.shadow
    if shadow is not None:
        logged = event.shadow
        logged.slate_propensity = shadow.slate_propensity
        logged.policy_version = shadow.policy_version
        logged.fallback_reason = shadow.fallback_reason
        logged.latency_micros = int(decision.shadow_latency_us)
        _fill_exploration(logged.exploration, shadow)
        _add_slots(logged.slate, shadow.slots)
        if shadow.candidate_scores is not None:
            logged.candidate_scores.extend(shadow.candidate_scores)


def _fill_exploration(exploration: Message, decision: Decision) -> None:
    exploration.algorithm = decision.algorithm
    exploration.epsilon = decision.epsilon
    exploration.temperature = decision.temperature
    exploration.gamma = decision.gamma
    exploration.cap = decision.cap
    exploration.server_seed = decision.server_seed & 0xFFFFFFFFFFFFFFFF
    exploration.draw_key = decision.draw_key


def _add_slots(slate: object, slots: list[DecisionSlot]) -> None:
    for position, slot in enumerate(slots):
        slate.add(
            item_id=slot.item_id,
            position=position,
            propensity=slot.propensity,
            score=slot.score,
            explored=slot.explored,
            candidate_index=slot.candidate_index,
            exploration_mass=slot.exploration_mass,
            draw=slot.draw,
            outside_probability=slot.outside_probability,
        )


def logged_long_term(event: events_pb2.DecisionEvent) -> LongTermInput | None:
    """The long-term input a logged decision was scored with (None when its surface blended none)."""
    if not event.HasField("long_term"):
        return None
    return LongTermInput(event.long_term.model_version, tuple(event.long_term.history))


__all__ = [
    "Decision",
    "DecisionSlot",
    "LongTermInput",
    "LongTermValue",
    "NoLongTermValue",
    "SurfacePolicy",
    "decision_record",
    "decision_to_event",
    "logged_long_term",
]
