"""A surface's serving policy: the mutable holder of its decision state (model version, cap), deciding through the
one decision path (:mod:`recsys_rl.serving.decision`).

A model swap or a cap change replaces the frozen :class:`DecisionPolicy` snapshot in one attribute store, so a
request in flight finishes with the state it started with and the next one uses the new state.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from recsys_rl.config import SurfaceConfig
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.decision import (
    Decision, DecisionPolicy, DecisionSlot, LongTermInput, LongTermValue, NoLongTermValue, decide,
)
from recsys_rl.serving.exploration import draw_key, make_explorer
from recsys_rl.serving.requests import validate_rank_request


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
    ) -> None:
        self.surface = surface
        self.server_seed = server_seed
        self._lock = threading.Lock()  # serialises writers of the snapshot; readers take it as one attribute
        self._state = DecisionPolicy(
            surface=surface.name, policy_version=policy_version, scorer=bandit,
            explorer=make_explorer(surface.exploration, surface.exploration_cap), exploration=surface.exploration,
            cap=surface.exploration_cap, server_seed=server_seed, long_term=long_term,
            long_term_weight=surface.model.long_term_weight,
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

    def rank(self, request: pb.RankRequest, *, deadline: float | None = None, baseline: np.ndarray | None = None,
             serve_baseline: str = "") -> Decision:
        """Decide a slate for ``request`` through the decision path.

        ``deadline``: a ``time.perf_counter()`` instant past which the baseline serves (None: no deadline).
        ``baseline``: the baseline scores from ``validate_rank_request`` when the caller validated already.
        ``serve_baseline``: a reason to serve the baseline whatever the model says (e.g. "log_unavailable").
        """
        if baseline is None:
            baseline = validate_rank_request(request, max_candidates=self.surface.max_candidates)
        key = draw_key(self.server_seed, self.surface.name, request.request_id)
        return decide(self._state, request, baseline, draw_key=key, deadline=deadline,
                      serve_baseline=serve_baseline)


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
    event = events_pb2.DecisionEvent(
        event_id=event_id,
        request_id=request.request_id,
        surface=decision.surface,
        user_id=request.user_id,
        slate_size=request.slate_size,
        slate_propensity=decision.slate_propensity,
        policy_version=decision.policy_version,
        serving_mode=decision.serving_mode,
        fallback_reason=decision.fallback_reason,
        attribution_window_seconds=window_s,
        latency_micros=int(latency_us),
    )
    event.served_at.FromNanoseconds(served_at_ns)
    event.context.CopyFrom(request.context)
    event.candidates.extend(request.candidates)
    event.shield_rules_fired.extend(decision.shield_rules_fired)
    if decision.long_term is not None:
        event.long_term.model_version = decision.long_term.model_version
        event.long_term.weight = decision.long_term_weight
        event.long_term.history.extend(decision.long_term.history)
    exploration = event.exploration
    exploration.algorithm = decision.algorithm
    exploration.epsilon = decision.epsilon
    exploration.temperature = decision.temperature
    exploration.gamma = decision.gamma
    exploration.cap = decision.cap
    exploration.server_seed = decision.server_seed & 0xFFFFFFFFFFFFFFFF
    exploration.draw_key = decision.draw_key
    for position, slot in enumerate(decision.slots):
        event.slate.add(
            item_id=slot.item_id,
            position=position,
            propensity=slot.propensity,
            score=slot.score,
            explored=slot.explored,
            candidate_index=slot.candidate_index,
            exploration_mass=slot.exploration_mass,
            draw=slot.draw,
        )
    return event


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
    "decision_to_event",
    "logged_long_term",
]
