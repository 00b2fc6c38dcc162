"""A surface's serving policy: score (VW ⊕ long-term value), draw a capped slate, or fall back.

    score(a) = vw_score(a) + λ · long_term_value(a),   λ = surface.model.long_term_weight

The slate is drawn by :func:`recsys_rl.serving.exploration.sample_slate` with the surface's explorer bounded by
the cap in force and the draw key blake2b(server_seed, surface, request_id), so a decision is
reproducible from its event (invariant 5). When the model raises or returns non-finite scores, or the
decision budget is spent before sampling, the baseline policy serves (invariant 4): candidates by
baseline_score descending, ties by index, each slot with propensity 1. InvalidInput is never a
fallback: it propagates so the server answers INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recsys_rl.serving.bandit import VWBandit
from recsys_rl.config import SurfaceConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.serving.exploration import Explorer, draw_key, effective_epsilon, make_explorer, sample_slate
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb


class LongTermValue(Protocol):
    """Long-term value per candidate (e.g. a slate-RL model), shape (n,), same order as candidates."""

    def values(self, request: pb.RankRequest) -> np.ndarray: ...


class NoLongTermValue:
    """Null object: no long-term term, the bandit alone decides."""

    def values(self, request: pb.RankRequest) -> np.ndarray:
        return np.zeros(len(request.candidates))


@dataclass(frozen=True)
class DecisionSlot:
    candidate_index: int
    item_id: str
    propensity: float
    score: float
    explored: bool
    exploration_mass: float
    draw: float


@dataclass
class Decision:
    """A served slate and everything the DecisionEvent needs to reproduce it."""

    slots: list[DecisionSlot]
    slate_propensity: float
    policy_version: str
    serving_mode: int  # ranking_service_pb2.ServingMode value
    fallback_reason: str
    surface: str
    algorithm: str
    epsilon: float
    temperature: float
    gamma: float
    cap: float
    server_seed: int
    draw_key: int
    shield_rules_fired: list[str] = field(default_factory=list)


class SurfacePolicy:
    """Ranks requests for one surface. Thread-safe: one lock serialises all VW use and model swaps."""

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
        self.long_term = long_term
        self._lock = threading.Lock()
        self._bandit = bandit
        self._policy_version = policy_version
        self._cap = surface.exploration_cap
        self._explorer: Explorer = make_explorer(surface.exploration, self._cap)

    @property
    def policy_version(self) -> str:
        return self._policy_version

    @property
    def cap(self) -> float:
        return self._cap

    @property
    def bandit(self) -> VWBandit:
        return self._bandit

    def swap_model(self, bandit: VWBandit, policy_version: str) -> None:
        """Atomically replace the model: a rank in flight finishes on the old one, the next uses the new."""
        with self._lock:
            self._bandit = bandit
            self._policy_version = policy_version

    def hot_items(self, limit: int = 10_000) -> list[tuple[bytes, str, str]]:
        """The serving cache's most recently used items, to warm a replacement model before ``swap_model``."""
        with self._lock:
            return self._bandit.cache.snapshot(limit)

    def set_cap(self, cap: float) -> None:
        """The cap in force from the next rank on (lowering is always allowed; the gate is the caller's)."""
        if not (0.0 <= cap <= 1.0):
            raise ValueError(f"cap: must be in [0, 1], got {cap}")
        explorer = make_explorer(self.surface.exploration, cap)
        with self._lock:
            self._cap = cap
            self._explorer = explorer

    def learn(self, event: events_pb2.DecisionEvent, slot_rewards: Sequence[float]) -> int:
        """bandit.learn under the policy's lock (VW is not thread-safe)."""
        with self._lock:
            return self._bandit.learn(event, slot_rewards)

    def rank(
        self, request: pb.RankRequest, *, budget_s: float | None = None, started_at: float | None = None
    ) -> Decision:
        """Decide a slate for ``request``.

        ``budget_s``: time allowed before sampling (None = the surface's decision_budget_ms; math.inf
        disables). ``started_at``: time.perf_counter() when the request arrived (default: now), so the
        server's own decoding counts against the budget.
        """
        start = time.perf_counter() if started_at is None else started_at
        budget = self.surface.decision_budget_ms / 1000.0 if budget_s is None else budget_s
        baseline = _validate_request(request)
        key = draw_key(self.server_seed, self.surface.name, request.request_id)
        with self._lock:
            version, explorer, cap = self._policy_version, self._explorer, self._cap
            try:
                scores = self._bandit.score(request)
            except InvalidInput:
                raise
            except Exception as exc:  # noqa: BLE001 - any model failure must still serve a slate
                return self._baseline(request, baseline, f"model_error: {type(exc).__name__}: {exc}", version, cap, key)
        weight = self.surface.model.long_term_weight
        if weight != 0.0:
            try:
                scores = scores + weight * np.asarray(self.long_term.values(request), dtype=np.float64)
            except InvalidInput:
                raise
            except Exception as exc:  # noqa: BLE001
                return self._baseline(
                    request, baseline, f"long_term_error: {type(exc).__name__}: {exc}", version, cap, key
                )
        if scores.shape != baseline.shape or not np.isfinite(scores).all():
            return self._baseline(request, baseline, "model_error: non-finite or misshapen scores", version, cap, key)
        elapsed = time.perf_counter() - start
        if elapsed > budget:
            reason = f"deadline: {elapsed * 1e3:.3f} ms spent before sampling, budget {budget * 1e3:.3f} ms"
            return self._baseline(request, baseline, reason, version, cap, key)
        draw = sample_slate(scores, request.slate_size, explorer, draw_key=key)
        candidates = request.candidates
        slots = [
            DecisionSlot(
                candidate_index=s.index,
                item_id=candidates[s.index].item_id,
                propensity=s.propensity,
                score=float(scores[s.index]),
                explored=s.explored,
                exploration_mass=s.exploration_mass,
                draw=s.draw,
            )
            for s in draw.slots
        ]
        return self._decision(slots, draw.slate_propensity, version, pb.SERVING_MODE_LEARNED, "", cap, key)

    def _baseline(
        self, request: pb.RankRequest, baseline: np.ndarray, reason: str, version: str, cap: float, key: int
    ) -> Decision:
        # lexsort's last key is primary: baseline descending, then index ascending (stable).
        order = np.lexsort((np.arange(baseline.size), -baseline))[: min(request.slate_size, baseline.size)]
        slots = [
            DecisionSlot(
                candidate_index=int(i),
                item_id=request.candidates[int(i)].item_id,
                propensity=1.0,
                score=float(baseline[i]),
                explored=False,
                exploration_mass=0.0,
                draw=0.0,
            )
            for i in order
        ]
        return self._decision(slots, 1.0, version, pb.SERVING_MODE_BASELINE_FALLBACK, reason, cap, key)

    def _decision(
        self, slots: list[DecisionSlot], slate_propensity: float, version: str, mode: int, reason: str, cap: float,
        key: int,
    ) -> Decision:  # fmt: skip
        cfg = self.surface.exploration
        return Decision(
            slots=slots,
            slate_propensity=slate_propensity,
            policy_version=version,
            serving_mode=mode,
            fallback_reason=reason,
            surface=self.surface.name,
            algorithm=cfg.algorithm,
            epsilon=effective_epsilon(cfg, cap),
            temperature=cfg.temperature,
            gamma=cfg.gamma,
            cap=cap,
            server_seed=self.server_seed,
            draw_key=key,
        )


def _validate_request(request: pb.RankRequest) -> np.ndarray:
    """The checks every path needs (the baseline must be able to serve); returns baseline scores."""
    if request.slate_size <= 0:
        raise InvalidInput("slate_size", f"must be positive, got {request.slate_size}")
    if not request.candidates:
        raise InvalidInput("candidates", "must not be empty")
    baseline = np.fromiter((c.baseline_score for c in request.candidates), dtype=np.float64)
    if not np.isfinite(baseline).all():
        i = int(np.flatnonzero(~np.isfinite(baseline))[0])
        raise InvalidInput(f"candidates[{i}].baseline_score", f"must be finite, got {baseline[i]}")
    return baseline


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


__all__ = [
    "Decision",
    "DecisionSlot",
    "LongTermValue",
    "NoLongTermValue",
    "SurfacePolicy",
    "decision_to_event",
]
