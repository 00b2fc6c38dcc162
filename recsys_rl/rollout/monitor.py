"""Feeds each canary surface's guardrail online and reverts the surface when it fails.

Serving calls :meth:`RolloutMonitor.decided` for every tracked decision: at stage canary it returns the decision's
arm (the tag the outcome tracker keeps with the decision) and records the canary's fallback and latency. When a
decision's attribution window closes, the tracker hands out its reward (``OutcomeTracker.drain_closed_rewards``)
and a background thread (like ``ModelWatcher``) feeds it to the guardrail that was in force when the decision was
served. When a guardrail fails, the thread calls ``on_revert(surface, snapshot)`` once (the service moves the
surface to stage baseline through the rollout store, audited with the snapshot), logs one ERROR line with the
estimates, and serving goes on: the next request sees stage baseline.

Arms: SERVING_MODE_CANARY → canary; SERVING_MODE_BASELINE_FALLBACK at stage canary → canary too (control users are
served the baseline without the model, so a fallback is a canary user's: intent to treat); SERVING_MODE_BASELINE
→ control. A new guardrail starts whenever a surface enters the canary stage again (after a revert, a person's
re-arm); a ramp within the canary keeps it (the two-sample comparison does not depend on the share). Guardrail
state lives in memory: after a restart it starts collecting again. With ``auto_advance`` on, a surface whose
guardrail holds moves one ``ramp`` step (``on_advance``: the rollout store judges the guardrail's evidence) each
time ``min_decisions`` more canary decisions have come in since the last step; after the last step it is live.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from recsys_rl.config import SurfaceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.rollout.config import Stage
from recsys_rl.rollout.guardrail import Arm, Guardrail, GuardrailSnapshot
from recsys_rl.serving.outcomes import OutcomeTracker

log = logging.getLogger(__name__)

OnRevert = Callable[[str, GuardrailSnapshot], None]
# Called for a surface whose auto_advance is on once its guardrail has held for min_decisions more canary decisions
# since the last step; True when the surface moved one ramp step (the rollout store judges the guardrail's evidence).
OnAdvance = Callable[[str, Guardrail], bool]

_ARM_OF_MODE = {
    pb.SERVING_MODE_CANARY: Arm.CANARY,
    pb.SERVING_MODE_BASELINE_FALLBACK: Arm.CANARY,
    pb.SERVING_MODE_BASELINE: Arm.CONTROL,
}


@dataclass(frozen=True)
class RewardTag:
    """What the outcome tracker keeps with a watched decision: the guardrail it feeds and its arm."""

    surface: str
    guardrail: Guardrail
    arm: Arm


class RolloutMonitor:
    """The guardrails of all surfaces of one server. Thread-safe."""

    def __init__(self, surfaces: Mapping[str, SurfaceConfig], on_revert: OnRevert, *,
                 trackers: Callable[[], Mapping[str, OutcomeTracker]], interval_s: float = 0.1,
                 min_health_decisions: int = 100, on_advance: OnAdvance | None = None) -> None:
        self._surfaces = dict(surfaces)
        self._on_revert = on_revert
        self._trackers = trackers
        self._interval_s = interval_s
        self._min_health = min_health_decisions
        self._lock = threading.Lock()
        self._guardrails: dict[str, Guardrail] = {}  # the guardrail in force per surface at stage canary
        self._reverted: set[int] = set()  # id() of guardrails whose failure was acted on
        self._on_advance = on_advance
        self._advanced_at: dict[int, int] = {}  # id() of a guardrail -> its canary decisions at the last ramp step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rollout-monitor", daemon=True)

    def decided(self, surface: str, stage: Stage, serving_mode: int, *, latency_ms: float) -> RewardTag | None:
        """Records one served decision; returns the tag to track it with (None: not watched)."""
        if stage is not Stage.CANARY:
            if surface in self._guardrails:
                with self._lock:
                    self._guardrails.pop(surface, None)  # leaving the canary: the next one starts afresh
            return None
        arm = _ARM_OF_MODE.get(serving_mode)
        if arm is None:
            return None
        guardrail = self._guardrails.get(surface)
        if guardrail is None or id(guardrail) in self._reverted:
            with self._lock:  # re-checked under the lock: two first requests must share one guardrail
                guardrail = self._guardrails.get(surface)
                if guardrail is None or id(guardrail) in self._reverted:
                    config = self._surfaces[surface]
                    guardrail = Guardrail(config.rollout, config.reward.range,  # type: ignore[arg-type]
                                          min_health_decisions=self._min_health)
                    self._guardrails[surface] = guardrail
        guardrail.observe_decision(arm, serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK, latency_ms)
        return RewardTag(surface, guardrail, arm)

    def adopted(self, surface: str, *, same_canary: bool) -> None:
        """Another process moved ``surface`` (this process adopted the move). ``same_canary``: a ramp step within
        the canary this guardrail watches; it keeps collecting and needs ``min_decisions`` more canary decisions
        before it may advance again. Otherwise (a revert, a re-arm, leaving the canary) the guardrail ends and the
        next canary decision starts a new one, so evidence from one canary never judges the next."""
        with self._lock:
            guardrail = self._guardrails.get(surface)
            if guardrail is None:
                return
            if same_canary:
                self._advanced_at[id(guardrail)] = guardrail.state().canary_decisions
            else:
                del self._guardrails[surface]

    def guardrail(self, surface: str) -> Guardrail | None:
        """The guardrail in force (None when the surface is not in the canary stage or no decision came yet)."""
        return self._guardrails.get(surface)

    def poll(self) -> list[str]:
        """Closes due windows, feeds their rewards, reverts failed surfaces; returns the surfaces reverted."""
        for tracker in self._trackers().values():
            tracker.expire()
            for tag, reward in tracker.drain_closed_rewards():
                if isinstance(tag, RewardTag):
                    tag.guardrail.observe(tag.arm, reward)
        reverted = []
        for surface, guardrail in list(self._guardrails.items()):
            if id(guardrail) in self._reverted:
                continue
            snapshot = guardrail.state()
            if snapshot.status != "failed":
                continue
            self._reverted.add(id(guardrail))
            log.error("surface %s: canary guardrail failed, reverting to baseline: %s; canary %d decisions mean %.4f, "
                      "control %d mean %.4f, canary − control in [%.4f, %.4f] (alpha %g), fallback rate %.4f, "
                      "latency p50 %.2f ms", surface, "; ".join(snapshot.failed_checks), snapshot.canary_decisions,
                      snapshot.canary_mean_reward, snapshot.control_decisions, snapshot.control_mean_reward,
                      snapshot.difference_low, snapshot.difference_high, snapshot.alpha,
                      snapshot.canary_fallback_rate, snapshot.canary_latency_p50_ms)
            try:
                self._on_revert(surface, snapshot)
            except Exception:  # noqa: BLE001 - serving goes on; the failure stays visible in state()
                log.exception("surface %s: the automatic revert failed", surface)
            reverted.append(surface)
        self._advance_held()
        return reverted

    def _advance_held(self) -> None:
        """auto_advance: one ramp step per min_decisions canary decisions the guardrail has held for."""
        if self._on_advance is None:
            return
        for surface, guardrail in list(self._guardrails.items()):
            config = self._surfaces[surface].rollout
            if not config.auto_advance or id(guardrail) in self._reverted:
                continue
            snapshot = guardrail.state()
            since = self._advanced_at.get(id(guardrail), 0)
            if snapshot.status != "holding" or snapshot.canary_decisions - since < config.min_decisions:
                continue
            try:
                if self._on_advance(surface, guardrail):
                    self._advanced_at[id(guardrail)] = snapshot.canary_decisions
            except Exception:  # noqa: BLE001 - serving goes on; the next tick asks again
                log.exception("surface %s: the automatic advance failed", surface)

    def start(self) -> RolloutMonitor:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the monitor must outlive a bad tick
                log.exception("rollout monitor tick failed")

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def evidence_json(snapshot: GuardrailSnapshot) -> str:
    """The snapshot as the audit entry's evidence (NaN → null)."""
    return json.dumps(snapshot.to_dict(), sort_keys=True)


__all__ = ["OnAdvance", "OnRevert", "RewardTag", "RolloutMonitor", "evidence_json"]
