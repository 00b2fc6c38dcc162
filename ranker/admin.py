"""PolicyAdminService servicer: exploration caps behind the gate and rollout stages behind the guardrail, audited.

Thin on purpose: the rules live in the core — ``recsys_rl.caps.gate`` (is this evidence enough to raise?) and
``recsys_rl.caps.store`` (durable caps and audit log) — and this layer decodes, calls them in the right order and
encodes. The order matters for the invariants:

1. validate (INVALID_ARGUMENT naming the field; nothing is audited for a malformed request);
2. under the data dir's admin lock (shared by every process serving it, ``CapStore.change``), after adopting the
   changes other processes accepted: read the cap in force; a raise needs verified, passing evidence, else the
   refusal is audited and the RPC fails with FAILED_PRECONDITION listing each failed check;
3. append the audit entry and persist the cap (both fsynced), then put the cap in force: a change is never
   in force without its audit line, and it applies from the next Rank on.

Rollout (GetRollout/SetRollout) follows the same order, with ``recsys_rl.rollout.store`` holding the rules: a
backward move is accepted at once, a forward one needs the guardrail's evidence (``service.rollout_evidence``);
a refusal is audited and fails with FAILED_PRECONDITION, the failed checks in the same trailing metadata as caps.
With several workers on the data dir, GetRollout shows and SetRollout judges the fleet's evidence (every worker's
published snapshot, ``recsys_rl.rollout.fleet``); a forward move first waits (bounded) for snapshots made after it
was asked for.

Who asks: the servicer is mounted only on the admin listener (``ranker.server.AdminListener``), behind
``ranker.admin_auth``'s interceptor, which refuses unauthenticated or unauthorized calls before they get here; every
audit entry's actor is the identity it verified (``verified_caller``), the request's ``actor`` only a note.

Shield (GetShield/SetShield): validate (INVALID_ARGUMENT naming the field, e.g. ``rules.max_per_value.creator``),
then under the shield store's lock check ``expected_version`` (ABORTED when another change came first), write the
version files, append the audit line, and put the rules in force for the next Rank (``DecisionService.set_shield``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Protocol

import grpc

from ranker.admin_auth import ADMIN_SERVICE, verified_caller
from ranker.errors import map_errors
from recsys_rl.caps.store import AuditEntry, CapStore
from recsys_rl.errors import InvalidInput, PreconditionFailed
from recsys_rl.caps.gate import FAILED_CHECKS_METADATA, EvidenceRefused, GateConfig, GateVerifier, evidence_digest
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.ranking.v1 import policy_admin_service_pb2_grpc as admin_grpc
from recsys_rl.rollout.config import Stage
from recsys_rl.rollout.store import (NO_EVIDENCE, GuardrailEvidence, RolloutAuditEntry, RolloutRefused, check_share,
                                     is_forward)
from recsys_rl.serving.service import DecisionService
from recsys_rl.shield.edits import ShieldEdit
from recsys_rl.shield.rules import rules_to_dict
from recsys_rl.shield.store import ShieldAuditEntry

__all__ = ["ADMIN_SERVICE", "PolicyAdminServicer", "add_admin_servicer"]

MAX_ACTOR_CHARS = 200
MAX_REASON_CHARS = 4000
MAX_EVIDENCE_BYTES = 1 << 20

_OUTCOMES = {"accepted": admin_pb.CAP_CHANGE_OUTCOME_ACCEPTED, "refused": admin_pb.CAP_CHANGE_OUTCOME_REFUSED}


class Verifier(Protocol):
    def verify(self, evidence: str, surface: str, cap: float, *, current_cap: float | None = None) -> object: ...


def _change(entry: AuditEntry) -> admin_pb.CapChange:
    change = admin_pb.CapChange(
        sequence=entry.sequence, surface=entry.surface, actor=entry.actor, old_cap=entry.old_cap,
        new_cap=entry.new_cap, reason=entry.reason, evidence_digest=entry.evidence_digest,
        outcome=_OUTCOMES[entry.outcome], failed_checks=entry.failed_checks,
    )
    change.changed_at.FromNanoseconds(int(entry.time_unix * 1e9))
    return change


_STAGE_PB = {
    Stage.BASELINE: admin_pb.ROLLOUT_STAGE_BASELINE, Stage.SHADOW: admin_pb.ROLLOUT_STAGE_SHADOW,
    Stage.CANARY: admin_pb.ROLLOUT_STAGE_CANARY, Stage.LIVE: admin_pb.ROLLOUT_STAGE_LIVE,
}
_STAGE_OF = {value: stage for stage, value in _STAGE_PB.items()}


def _rollout_change(entry: RolloutAuditEntry) -> admin_pb.RolloutChange:
    change = admin_pb.RolloutChange(
        sequence=entry.sequence, surface=entry.surface, actor=entry.actor, old_stage=_STAGE_PB[entry.old_stage],
        new_stage=_STAGE_PB[entry.new_stage], old_canary_share=entry.old_canary_share,
        new_canary_share=entry.new_canary_share, reason=entry.reason, outcome=_OUTCOMES[entry.outcome],
        failed_checks=entry.failed_checks, automatic=entry.automatic, evidence_json=entry.evidence_json,
    )
    change.changed_at.FromNanoseconds(int(entry.time_unix * 1e9))
    return change


def _check_history_limit(limit: int) -> None:
    """GetSurface, GetRollout and GetShield: 0 is the whole trail, a negative limit names the field."""
    if limit < 0:
        raise InvalidInput("history_limit", f"must be >= 0, got {limit}")


def _fields(found: object | None, message: type) -> dict[str, Any]:
    """A hook's answer (dataclass or mapping, None = nothing yet) as keyword arguments of ``message``."""
    if found is None:
        return {}
    values = dataclasses.asdict(found) if dataclasses.is_dataclass(found) else dict(found)  # type: ignore[arg-type]
    known = message.DESCRIPTOR.fields_by_name  # type: ignore[attr-defined]
    return {name: value for name, value in values.items() if name in known}


class PolicyAdminServicer(admin_grpc.PolicyAdminServiceServicer):
    def __init__(self, service: DecisionService, cap_store: CapStore, verifier: Verifier) -> None:
        self.service = service
        self.cap_store = cap_store
        self.verifier = verifier

    def _surface(self, surface: str) -> str:
        if not surface:
            raise InvalidInput("surface", "must not be empty")
        if surface not in self.service.surfaces:
            known = ", ".join(sorted(self.service.surfaces))
            raise InvalidInput("surface", f"unknown surface {surface!r} (configured: {known})")
        return surface

    @map_errors
    def GetSurface(  # noqa: N802
        self, request: admin_pb.GetSurfaceRequest, context: grpc.ServicerContext
    ) -> admin_pb.GetSurfaceResponse:
        surface = self._surface(request.surface)
        _check_history_limit(request.history_limit)
        self.service.refresh_admin_state()  # a change another worker just accepted shows here, not a tick later
        history = self.cap_store.history(surface, limit=request.history_limit)
        return admin_pb.GetSurfaceResponse(
            surface=surface, exploration_cap=self.service.cap(surface),
            configured_cap=self.service.surfaces[surface].exploration_cap,
            policy_version=self.service.policy_version(surface), history=[_change(e) for e in history],
            baseline_version=self.service.baseline_version(surface),
        )

    @map_errors
    def SetExplorationCap(  # noqa: N802
        self, request: admin_pb.SetExplorationCapRequest, context: grpc.ServicerContext
    ) -> admin_pb.SetExplorationCapResponse:
        surface = self._surface(request.surface)
        if not request.HasField("cap"):
            raise InvalidInput("cap", "required (a number in [0, 1])")
        cap = request.cap
        if not (math.isfinite(cap) and 0.0 <= cap <= 1.0):
            raise InvalidInput("cap", f"must be a number in [0, 1], got {cap}")
        actor, reason = self._actor(request.actor, request.reason)
        if len(request.evidence.encode()) > MAX_EVIDENCE_BYTES:
            raise InvalidInput("evidence", f"larger than {MAX_EVIDENCE_BYTES} bytes (not a gate report)")
        digest = evidence_digest(request.evidence) if request.evidence else ""

        refusal: list[EvidenceRefused] = []

        def judge(old: float) -> list[str]:
            """Under the cross-process admin lock, against the cap in force after adopting other processes' changes:
            a report made against a cap another worker has since changed fails its current_cap check."""
            if cap <= old:
                return []  # a cap can always go down
            try:
                self.verifier.verify(request.evidence, surface, cap, current_cap=old)
            except EvidenceRefused as refused:
                refusal.append(refused)
                return [c.line() for c in refused.failed]
            return []

        entry = self.cap_store.change(surface, cap, in_force=self.service.cap, judge=judge, actor=actor,
                                      reason=reason, evidence_digest=digest)
        old = entry.old_cap
        if not entry.accepted:
            # Also machine-readable, so clients need not parse the status message.
            context.set_trailing_metadata(((FAILED_CHECKS_METADATA, json.dumps(entry.failed_checks).encode()),))
            raise PreconditionFailed(
                f"raising the exploration cap of surface {surface!r} from {old:g} to {cap:g} refused by the "
                f"gate: {refusal[0]}"
            )
        return admin_pb.SetExplorationCapResponse(
            exploration_cap=cap, old_cap=old, policy_version=self.service.policy_version(surface),
            change=_change(entry),
        )


    # --- rollout ---------------------------------------------------------------------------------------------

    @map_errors
    def GetRollout(  # noqa: N802
        self, request: admin_pb.GetRolloutRequest, context: grpc.ServicerContext
    ) -> admin_pb.GetRolloutResponse:
        surface = self._surface(request.surface)
        _check_history_limit(request.history_limit)
        self.service.refresh_admin_state()  # a change another worker just accepted shows here, not a tick later
        state = self.service.rollout_state(surface)
        fleet = self.service.fleet_rollout(surface)  # every worker's evidence, whichever worker answers
        workers = [admin_pb.WorkerRollout(
            worker=w.label, pid=w.pid, rollout_sequence=w.rollout_sequence, status=w.status,
            guardrail=None if w.guardrail is None else admin_pb.GuardrailState(
                **_fields(w.guardrail, admin_pb.GuardrailState)),
            shadow=admin_pb.ShadowStats(**_fields(w.shadow, admin_pb.ShadowStats))) for w in fleet.workers()]
        return admin_pb.GetRolloutResponse(
            surface=surface, stage=_STAGE_PB[state.stage], canary_share=state.canary_share, reverted=state.reverted,
            guardrail=admin_pb.GuardrailState(**_fields(fleet.guardrail(), admin_pb.GuardrailState)),
            shadow=admin_pb.ShadowStats(**_fields(fleet.shadow(), admin_pb.ShadowStats)),
            history=[_rollout_change(e) for e in self.service.rollout.history(surface, limit=request.history_limit)],
            workers=workers,
        )

    @map_errors
    def SetRollout(  # noqa: N802
        self, request: admin_pb.SetRolloutRequest, context: grpc.ServicerContext
    ) -> admin_pb.SetRolloutResponse:
        """Stage UNSPECIFIED keeps the current stage, an absent canary_share the current share (one is needed)."""
        surface = self._surface(request.surface)
        if request.stage != admin_pb.ROLLOUT_STAGE_UNSPECIFIED and request.stage not in _STAGE_OF:
            raise InvalidInput("stage", f"unknown RolloutStage value {request.stage}")
        stage = _STAGE_OF.get(request.stage)
        share = check_share(request.canary_share) if request.HasField("canary_share") else None
        if stage is None and share is None:
            raise InvalidInput("stage", "give a stage, a canary_share, or both")
        actor, reason = self._actor(request.actor, request.reason)

        def evidence() -> GuardrailEvidence:  # the store asks only for a forward move, under its lock
            current = self.service.rollout_state(surface)  # after adopting other workers' moves
            target = current.stage if stage is None else stage
            found = self.service.rollout_evidence(surface, target, current.canary_share if share is None else share)
            return NO_EVIDENCE if found is None else found

        self.service.refresh_admin_state()
        current = self.service.rollout_state(surface)
        if is_forward(current, current.stage if stage is None else stage,
                      current.canary_share if share is None else share):
            # Judge what every worker had served when the move was asked for (bounded wait, before the admin lock:
            # a worker adopting a change needs that lock). Backward moves never wait.
            self.service.settle_fleet(surface)
        try:
            entry = self.service.rollout.set(surface, stage, share, actor=actor, reason=reason, evidence=evidence)
        except RolloutRefused as refused:
            context.set_trailing_metadata(((FAILED_CHECKS_METADATA, json.dumps(refused.failed_checks).encode()),))
            raise
        return admin_pb.SetRolloutResponse(stage=_STAGE_PB[entry.new_stage], canary_share=entry.new_canary_share,
                                           change=_rollout_change(entry))

    def _actor(self, on_behalf_of: str, reason: str) -> tuple[str, str]:
        """The audit actor and reason of a change: the actor is the caller the admin listener verified, never what
        the request says; the request's ``actor``, when it names someone else, is kept in the reason as
        "on behalf of NAME: REASON" - a note, not an identity."""
        note = on_behalf_of.strip()
        if len(note) > MAX_ACTOR_CHARS:
            raise InvalidInput("actor", f"longer than {MAX_ACTOR_CHARS} characters")
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidInput("reason", f"longer than {MAX_REASON_CHARS} characters")
        identity = verified_caller()
        if note and note != identity:
            reason = f"on behalf of {note}: {reason}" if reason else f"on behalf of {note}"
        return identity, reason


    # --- shield ---------------------------------------------------------------------------------------------

    @map_errors
    def GetShield(  # noqa: N802
        self, request: admin_pb.GetShieldRequest, context: grpc.ServicerContext
    ) -> admin_pb.GetShieldResponse:
        surface = self._surface(request.surface)
        _check_history_limit(request.history_limit)
        self.service.refresh_admin_state()  # a change another worker just accepted shows here, not a tick later
        rules = self.service.shield(surface)
        table = rules_to_dict(rules, blocked_items=request.include_blocked_items)
        ruleset = admin_pb.ShieldRuleSet(
            blocked_items=table.get("blocked_items", []), max_per_value=table["max_per_value"],
            pinned=table["pinned"], min_feasible=table["min_feasible"] if rules.active else 0,
            blocked_items_count=len(rules.blocked_items),
        )
        for key, values in table["blocked_values"].items():
            ruleset.blocked_values[key].values.extend(values)
        if "near_duplicates" in table:
            ruleset.near_duplicates.max_cosine = table["near_duplicates"]["max_cosine"]
        history = self.service.shields.history(surface, limit=request.history_limit)
        return admin_pb.GetShieldResponse(surface=surface, version=rules.version, rules=ruleset,
                                          history=[_shield_change(e) for e in history])

    @map_errors
    def SetShield(  # noqa: N802
        self, request: admin_pb.SetShieldRequest, context: grpc.ServicerContext
    ) -> admin_pb.SetShieldResponse:
        """replace_rules: ``rules`` whole; otherwise ``rules`` may carry only blocked ids / a blocked file to add."""
        surface = self._surface(request.surface)
        actor, reason = self._actor(request.actor, request.reason)
        rules = request.rules
        replacement = _rules_table(rules) if request.replace_rules else None
        if not request.replace_rules:
            for name in ("blocked_values", "max_per_value", "pinned"):
                if len(getattr(rules, name)):
                    raise InvalidInput(f"rules.{name}", "set replace_rules to replace the rules (without it only "
                                                         "blocked_items, blocked_items_file and the edits apply)")
            if rules.min_feasible:
                raise InvalidInput("rules.min_feasible", "set replace_rules to replace the rules")
            if rules.HasField("near_duplicates"):
                raise InvalidInput("rules.near_duplicates", "set replace_rules to replace the rules")
        edit = ShieldEdit(replacement=replacement,
                          block=[*request.block_items, *([] if request.replace_rules else rules.blocked_items)],
                          unblock=list(request.unblock_items),
                          blocked_items_file="" if request.replace_rules else rules.blocked_items_file)
        entry = self.service.set_shield(surface, edit, actor=actor, reason=reason,
                                        expected_version=request.expected_version)
        return admin_pb.SetShieldResponse(version=entry.new_version, old_version=entry.old_version,
                                          change=_shield_change(entry))


def _rules_table(rules: admin_pb.ShieldRuleSet) -> dict[str, Any]:
    """A ShieldRuleSet as the TOML-named rules dict (min_feasible 0 means 1)."""
    table: dict[str, Any] = {
        "blocked_items": list(rules.blocked_items),
        "blocked_values": {key: list(values.values) for key, values in rules.blocked_values.items()},
        "max_per_value": dict(rules.max_per_value), "pinned": dict(rules.pinned),
        "min_feasible": rules.min_feasible or 1,
    }
    if rules.blocked_items_file:
        table["blocked_items_file"] = rules.blocked_items_file
    if rules.HasField("near_duplicates"):  # unset: no near-duplicate rule (max_cosine 0 is refused, naming it)
        table["near_duplicates"] = {"max_cosine": rules.near_duplicates.max_cosine}
    return table


def _shield_change(entry: ShieldAuditEntry) -> admin_pb.ShieldChange:
    change = admin_pb.ShieldChange(sequence=entry.sequence, surface=entry.surface, actor=entry.actor,
                                   old_version=entry.old_version, new_version=entry.new_version, reason=entry.reason,
                                   summary=entry.summary)
    change.changed_at.FromNanoseconds(int(entry.time_unix * 1e9))
    return change


def add_admin_servicer(grpc_server: grpc.Server, service: DecisionService, data_dir: Path | str, *,
                       gate_for: object = None) -> PolicyAdminServicer:
    """Registers PolicyAdminService on ``grpc_server`` (before it starts) and returns the servicer.

    The service already serves the caps recorded under ``D/admin`` (DecisionService applies them at start)
    and owns the CapStore this servicer records changes in. ``gate_for(surface) -> GateConfig`` gives each
    surface's thresholds (default: the surface config's ``gate`` section). Mount it only behind
    ``ranker.admin_auth.AdminAuthInterceptor`` (without it every change fails UNAUTHENTICATED); add
    ``ADMIN_SERVICE`` to reflection and health.
    """

    def default_gate_for(surface: str) -> GateConfig:
        return service.surfaces[surface].gate

    verifier = GateVerifier(data_dir, gate_for or default_gate_for)  # type: ignore[arg-type]
    servicer = PolicyAdminServicer(service, service.caps, verifier)
    admin_grpc.add_PolicyAdminServiceServicer_to_server(servicer, grpc_server)
    return servicer
