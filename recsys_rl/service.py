"""The decision service: surfaces' policies, the log writer and the online learners behind one object.

Usable without gRPC (``ranker`` is a thin layer over it). One ``rank`` call: resolve the surface, let its policy
decide (VW scores ⊕ long-term value → capped exploration, or the baseline on failure), put the DecisionEvent in
the log writer's queue, track it for outcome attribution, and only then return (invariant 3).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from logging_schema.writer import LogQueueFull, LogWriter
from recsys_rl.bandit import VWBandit
from recsys_rl.config import ServiceConfig, SurfaceConfig
from recsys_rl.errors import InvalidInput, NotFound, NotReady, Overloaded
from recsys_rl.learner import OnlineLearner
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.policy import Decision, SurfacePolicy, decision_to_event
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.registry import Checkpoint, ModelRegistry


@dataclass
class _Surface:
    config: SurfaceConfig
    policy: SurfacePolicy
    learner: OnlineLearner


class DecisionService:
    """Owns everything a running server decides with. Thread-safe: Rank/ReportOutcome run on a thread pool."""

    def __init__(self, config: ServiceConfig, data_dir: Path, *, start_learners: bool = True) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.registry = ModelRegistry(self.data_dir / "models")
        self.writer = LogWriter(self.data_dir / "logs")
        self._surfaces: dict[str, _Surface] = {}
        self._closed = threading.Event()
        for name, surface in config.surfaces.items():
            self._surfaces[name] = self._load_surface(surface)
        if start_learners:
            for entry in self._surfaces.values():
                entry.learner.start()

    def _load_surface(self, surface: SurfaceConfig) -> _Surface:
        checkpoint = self.registry.latest(surface.name)
        if checkpoint is None:
            # A fresh surface starts from an untrained model, published so the version names a real file.
            fresh = VWBandit(surface.model.vw_args)
            checkpoint = self.registry.publish(
                surface.name, fresh.to_bytes(), parent=None, data_range={},
                parameters={"vw_args": surface.model.vw_args, "updates": 0},
            )
        serving = VWBandit(surface.model.vw_args, model=checkpoint.model)
        policy = SurfacePolicy(surface, serving, checkpoint.version, server_seed=self.config.seed)
        learner = OnlineLearner(
            surface,
            VWBandit(surface.model.vw_args, model=checkpoint.model),
            self.registry,
            parent_version=checkpoint.version,
            on_publish=lambda cp, name=surface.name: self.load_version(name, cp),
        )
        return _Surface(surface, policy, learner)

    @property
    def surfaces(self) -> dict[str, SurfaceConfig]:
        return {name: entry.config for name, entry in self._surfaces.items()}

    def policy_version(self, surface: str) -> str:
        return self._entry(surface).policy.policy_version

    def _entry(self, surface: str, field: str = "surface") -> _Surface:
        entry = self._surfaces.get(surface)
        if entry is None:
            known = ", ".join(sorted(self._surfaces))
            raise InvalidInput(field, f"unknown surface {surface!r} (configured: {known})")
        return entry

    def rank(self, request: pb.RankRequest, *, budget_s: float | None = None) -> tuple[Decision, str]:
        """Decides, logs (enqueues) and tracks one request. Returns the decision and its event id."""
        if self._closed.is_set():
            raise NotReady("the service is shutting down")
        started_ns = time.perf_counter_ns()
        entry = self._entry(request.surface)
        budget = entry.config.decision_budget_ms / 1000.0
        if budget_s is not None:
            budget = min(budget, budget_s)
        decision = entry.policy.rank(request, budget_s=budget, started_at=started_ns / 1e9)
        event_id = uuid.uuid4().hex
        event = decision_to_event(
            request,
            decision,
            event_id=event_id,
            served_at_ns=time.time_ns(),
            window_s=entry.config.reward.attribution_window_seconds,
            latency_us=(time.perf_counter_ns() - started_ns) // 1000,
        )
        try:
            self.writer.submit(events_pb2.LogRecord(decision=event))
        except LogQueueFull as exc:
            raise Overloaded(f"decision log queue is full: {exc}") from exc
        entry.learner.track(event)
        return decision, event_id

    def report_outcome(self, request: pb.ReportOutcomeRequest) -> bool:
        """Attributes and logs one outcome. True when it counts toward its decision's reward."""
        if not request.event_id:
            raise InvalidInput("event_id", "must not be empty")
        if not request.outcome:
            raise InvalidInput("outcome", "must not be empty")
        if not math.isfinite(request.value):
            raise InvalidInput("value", f"must be finite, got {request.value}")
        received_ns = time.time_ns()
        occurred_s = (
            request.occurred_at.seconds + request.occurred_at.nanos * 1e-9
            if request.HasField("occurred_at")
            else received_ns * 1e-9
        )
        entry = next((e for e in self._surfaces.values() if e.learner.knows(request.event_id)), None)
        if entry is None:
            raise NotFound(f"event_id: no decision {request.event_id!r} is known to this server")
        attributed = entry.learner.attribute(
            request.event_id, request.item_id, request.outcome, request.value, occurred_s
        )
        outcome = events_pb2.OutcomeEvent(
            event_id=request.event_id,
            item_id=request.item_id,
            outcome=request.outcome,
            value=request.value,
            surface=entry.config.name,
            attributed=attributed,
        )
        outcome.occurred_at.FromNanoseconds(int(occurred_s * 1e9))
        outcome.received_at.FromNanoseconds(received_ns)
        try:
            self.writer.submit(events_pb2.LogRecord(outcome=outcome))
        except LogQueueFull as exc:
            raise Overloaded(f"outcome log queue is full: {exc}") from exc
        return attributed

    def load_version(self, surface: str, checkpoint: Checkpoint) -> None:
        """Hot-swaps the serving model; a checkpoint that fails to load raises and the old one keeps serving."""
        entry = self._entry(surface)
        bandit = VWBandit(entry.config.model.vw_args, model=checkpoint.model)
        bandit.cache.warm(entry.policy.hot_items())  # parse off the request path, then swap
        entry.policy.swap_model(bandit, checkpoint.version)

    def set_cap(self, surface: str, cap: float) -> None:
        self._entry(surface).policy.set_cap(cap)

    def learner(self, surface: str) -> OnlineLearner:
        return self._entry(surface).learner

    def close(self) -> None:
        """Stops learners (publishing what they learned), then drains and fsyncs the log. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        for entry in self._surfaces.values():
            entry.learner.stop()
        self.writer.close()
