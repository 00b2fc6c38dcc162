"""Durable rollout stages per surface and their audit trail, under ``D/admin/`` (the same scheme as the caps).

* ``rollout-audit.jsonl`` — one JSON object per line, appended and fsynced for every change of a surface's
  stage or canary share, by a person (``set``) or by the server (``revert``, ``advance``), and for every refused
  forward move: sequence, time, surface, actor, kind, old/new stage and share, reason, outcome, failed checks,
  automatic flag and the guardrail's evidence as JSON. It is the write-ahead log: an entry is durable before
  the change is in force.
* ``rollout.json`` — the approved state per surface plus the audit sequence it reflects, replaced atomically
  (temporary file, fsync, rename, fsync of the directory) after each accepted change.

On load the snapshot is rolled forward with any accepted entry newer than it, so a crash between the two
writes loses nothing; a torn last audit line (crash mid-append) is skipped and counted. Writers in several
processes on one data dir are serialised by ``flock`` on ``admin/.lock`` (shared with the cap store).

The rules (invariant 2's counterpart for rollout): moving back — toward baseline, or a smaller canary share —
is always accepted at once; moving forward needs ``GuardrailEvidence`` whose checks all pass, otherwise the
refusal is audited and ``RolloutRefused`` lists the failed checks.

At start (``apply_config``) the configuration is an input that changes the shared state only when *it* changed,
as for caps and shield rules, so a restarted worker serves what the running ones serve:

1. first start (no state recorded): the configured stage and share are recorded ("initial") and serve;
2. the configured stage or share differs from what the trail last recorded (an ``initial`` or ``config`` entry): a
   move back (or to the same reach) is applied as an audited ``config`` change by ``recsys-rl serve
   (configuration)``; a move forward is not applied (it needs evidence: ``recsys-rl rollout set``), a refused
   ``config`` entry records it as seen, with one warning naming the key, so the next start does not refuse it again;
3. otherwise the recorded state serves: an approved forward move or a revert survives every restart.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from recsys_rl.caps.durable import admin_lock, append_line, file_stamp, read_lines, write_json_atomically

from recsys_rl.errors import InvalidInput, PreconditionFailed
from recsys_rl.rollout.config import RolloutConfig, RolloutState, Stage, parse_stage

if TYPE_CHECKING:
    from recsys_rl.config import SurfaceConfig

log = logging.getLogger(__name__)

ADMIN_DIR = "admin"
ROLLOUT_FILE = "rollout.json"
AUDIT_FILE = "rollout-audit.jsonl"
SERVER_ACTOR = "recsys-rl serve"
GUARDRAIL_ACTOR = "recsys-rl guardrail"
CONFIG_ACTOR = "recsys-rl serve (configuration)"
CONFIG_FORWARD_REFUSED = "configuration: a forward move needs the guardrail's evidence (`recsys-rl rollout set`)"

Outcome = Literal["accepted", "refused"]
# initial: a surface's first start records its configured state as the approved baseline; config: the configured
# state changed between starts (accepted when not forward of the state in force, else refused); set: a person's
# change (re-arming after a revert included); revert: the guardrail pulled the surface back to baseline;
# advance: auto_advance moved the canary one ramp step (or to live) because the guardrail held.
Kind = Literal["initial", "config", "set", "revert", "advance"]
_KINDS = ("initial", "config", "set", "revert", "advance")


@dataclass(frozen=True)
class GuardrailEvidence:
    """What a forward move is judged on: named checks ``(name, passed, detail)`` and the estimates behind them.

    Produced by the guardrail (shadow → canary: enough shadow decisions and a low fallback rate; a larger
    share or live: the canary − control bound holds with enough decisions per arm); recorded in the audit entry.
    """

    checks: list[tuple[str, bool, str]]
    estimates: dict[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(passed for _, passed, _ in self.checks)

    def failed_checks(self) -> list[str]:
        """``"name: detail"`` for each failed check; one line when there are no checks at all."""
        if not self.checks:
            return ["guardrail: no checks were evaluated"]
        return [f"{name}: {detail}" for name, passed, detail in self.checks if not passed]

    def to_json(self) -> str:
        return json.dumps({"checks": [{"name": n, "passed": p, "detail": d} for n, p, d in self.checks],
                           "estimates": self.estimates}, sort_keys=True, default=str)


NO_EVIDENCE = GuardrailEvidence([("guardrail", False, "no guardrail evidence is available for this surface")])


@dataclass(frozen=True)
class RolloutAuditEntry:
    """One line of ``rollout-audit.jsonl``. The ``new_*`` fields are what was asked; in force only when accepted."""

    sequence: int
    time_unix: float
    surface: str
    actor: str
    kind: Kind
    old_stage: Stage
    new_stage: Stage
    old_canary_share: float
    new_canary_share: float
    reason: str
    outcome: Outcome
    failed_checks: list[str] = field(default_factory=list)
    automatic: bool = False
    reverted: bool = False  # the state this entry makes is "reverted by the guardrail"
    evidence_json: str = ""

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"

    @property
    def state(self) -> RolloutState:
        return RolloutState(self.new_stage, self.new_canary_share, self.reverted, self.sequence)

    def to_json(self) -> str:
        data = asdict(self)
        data["old_stage"], data["new_stage"] = self.old_stage.value, self.new_stage.value
        return json.dumps(data, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RolloutAuditEntry:
        outcome, kind = str(data["outcome"]), str(data["kind"])
        if outcome not in ("accepted", "refused") or kind not in _KINDS:
            raise ValueError(f"outcome/kind: unknown value {outcome!r}/{kind!r}")
        return cls(
            sequence=int(data["sequence"]), time_unix=float(data["time_unix"]),  # type: ignore[arg-type]
            surface=str(data["surface"]), actor=str(data["actor"]), kind=kind,  # type: ignore[arg-type]
            old_stage=parse_stage(str(data["old_stage"])), new_stage=parse_stage(str(data["new_stage"])),
            old_canary_share=check_share(data["old_canary_share"]),  # type: ignore[arg-type]
            new_canary_share=check_share(data["new_canary_share"]),  # type: ignore[arg-type]
            reason=str(data.get("reason", "")), outcome=outcome,  # type: ignore[arg-type]
            failed_checks=[str(c) for c in data.get("failed_checks", [])],  # type: ignore[union-attr]
            automatic=bool(data.get("automatic", False)), reverted=bool(data.get("reverted", False)),
            evidence_json=str(data.get("evidence_json", "")),
        )


class RolloutRefused(PreconditionFailed):
    """A forward move without passing evidence; the refusal is already in the audit trail (``entry``)."""

    def __init__(self, message: str, entry: RolloutAuditEntry) -> None:
        super().__init__(message)
        self.entry = entry
        self.failed_checks = entry.failed_checks


def check_share(share: float, field_name: str = "canary_share") -> float:
    """``share`` as a float in [0, 1]; InvalidInput naming ``field_name`` otherwise (NaN included)."""
    try:
        value = float(share)
    except (TypeError, ValueError):
        raise InvalidInput(field_name, f"must be a number in [0, 1], got {share!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidInput(field_name, f"must be a number in [0, 1], got {share!r}")
    return value


def reach(stage: Stage, canary_share: float) -> tuple[int, float]:
    """How far a state reaches real traffic; a move to a larger reach is forward. The share counts at canary only."""
    return stage.order, canary_share if stage is Stage.CANARY else 0.0


def is_forward(old: RolloutState, stage: Stage, canary_share: float) -> bool:
    return reach(stage, canary_share) > reach(old.stage, old.canary_share)


class RolloutStore:
    """Rollout state per surface in ``data_dir/admin``; thread-safe, appends serialised across processes."""

    def __init__(self, data_dir: Path | str) -> None:
        self.admin_dir = Path(data_dir) / ADMIN_DIR
        self.admin_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.admin_dir / ROLLOUT_FILE
        self.audit_path = self.admin_dir / AUDIT_FILE
        self._lock = threading.Lock()
        self.torn_audit_lines = 0
        self._configs: dict[str, RolloutConfig] = {}
        with self._locked():
            self._approved, self._sequence = self._load()
        # What serves: replaced whole (never mutated) so ``state`` reads it without a lock.
        self._in_force: dict[str, RolloutState] = dict(self._approved)
        self._seen_audit = self._audit_stamp()

    # --- reading (serving reads ``state`` on every request) ---------------------------------------------------

    def state(self, surface: str) -> RolloutState:
        """The rollout in force for ``surface`` (an unknown surface is InvalidInput naming ``surface``)."""
        found = self._in_force.get(surface)
        if found is None:
            raise InvalidInput("surface", f"no rollout state for surface {surface!r}")
        return found

    def config(self, surface: str) -> RolloutConfig:
        """The surface's rollout settings as configured (defaults when ``apply_config`` has not seen it)."""
        return self._configs.get(surface, RolloutConfig())

    def approved(self, surface: str) -> RolloutState | None:
        """The state last accepted in the audit trail (None: never recorded)."""
        return self._approved.get(surface)

    def history(self, surface: str | None = None, *, limit: int = 0) -> list[RolloutAuditEntry]:
        """Audit entries (of ``surface``, or all), oldest first; ``limit`` > 0 keeps the most recent ones."""
        entries = [e for e in self._read_audit() if surface is None or e.surface == surface]
        return entries[-limit:] if limit > 0 else entries

    def refresh(self) -> bool:
        """Adopts changes other processes on this data dir recorded (e.g. another worker's revert); cheap when
        there are none (one stat). Returns whether the trail had changed. Call it periodically."""
        if self._audit_stamp() == self._seen_audit:
            return False
        with self._locked():
            self._adopt()
        return True

    # --- start ---------------------------------------------------------------------------------------------

    def apply_config(self, surfaces: Mapping[str, SurfaceConfig]) -> None:
        """Puts each configured surface's state in force, by the start-up rules of the module docstring (audited).

        Under the lock, after adopting the disk: workers starting together with a changed configuration record it
        once (the second one finds it recorded), and every running process adopts an applied change.
        """
        self._configs = {name: surface.rollout for name, surface in surfaces.items()}
        with self._locked():
            self._apply_config()

    def _apply_config(self) -> None:
        self._adopt()
        seen = {e.surface: (e.new_stage, e.new_canary_share) for e in self._read_audit()
                if e.kind in ("initial", "config")}
        for name in sorted(set(self._approved) - set(self._configs)):
            log.warning("rollout state of surface %r ignored: the surface is not configured", name)
        for name, rollout in self._configs.items():
            configured = RolloutState(rollout.initial_stage, rollout.canary_share)
            current = self._approved.get(name)
            if current is None:
                self._record(name, actor=SERVER_ACTOR, kind="initial", old=configured, new=configured,
                             reason="initial configuration", outcome="accepted")
            elif seen.get(name) == (configured.stage, configured.canary_share):
                if (current.stage, current.canary_share) != (configured.stage, configured.canary_share):
                    log.info("surface %s: serving rollout %s (share %g) recorded at run time (the configuration's "
                             "%s, share %g, is unchanged since the last start)", name, current.stage.value,
                             current.canary_share, configured.stage.value, configured.canary_share)
            else:
                self._apply_changed_config(name, configured, current, seen.get(name))
        # What serves is what the trail recorded, on every process: never a configuration-only state.
        self._in_force = {name: self._approved[name] for name in self._configs}

    def _apply_changed_config(self, name: str, configured: RolloutState, current: RolloutState,
                              last: tuple[Stage, float] | None) -> None:
        """A configured state that differs from the last one recorded: applied unless it moves forward of
        ``current``, else recorded as a refused move. Called under ``_locked``."""
        stage_changed = last is None or last[0] is not configured.stage
        # The share reaches traffic at canary only: name it when it is what changed or when it matters.
        share_changed = (last is None or last[1] != configured.canary_share) and (
            not stage_changed or configured.stage is Stage.CANARY)
        named = ", ".join([f"surfaces.{name}.rollout.stage = {configured.stage.value}"] * stage_changed
                          + [f"surfaces.{name}.rollout.canary_share = {configured.canary_share:g}"] * share_changed)
        reason = f"the configuration changed since the last start: {named}"
        if is_forward(current, configured.stage, configured.canary_share):
            self._record(name, actor=CONFIG_ACTOR, kind="config", old=current, new=configured, reason=reason,
                         outcome="refused", failed=[CONFIG_FORWARD_REFUSED])
            log.warning("surface %s: configured %s is forward of the rollout in force and is not applied; serving %s "
                        "(share %g) (move it forward with `recsys-rl rollout set`)", name, named,
                        current.stage.value, current.canary_share)
            return
        # A configuration is not a re-arm: a reverted surface configured at baseline stays "reverted".
        new = replace(configured, reverted=current.reverted and configured.stage is Stage.BASELINE)
        self._record(name, actor=CONFIG_ACTOR, kind="config", old=current, new=new, reason=reason, outcome="accepted")
        log.info("surface %s: configured rollout %s (share %g) applied (was %s, share %g), audited", name,
                 configured.stage.value, configured.canary_share, current.stage.value, current.canary_share)

    # --- changes -------------------------------------------------------------------------------------------

    def set(self, surface: str, stage: Stage | None, canary_share: float | None, *, actor: str, reason: str = "",
            evidence: Callable[[], GuardrailEvidence] | None = None) -> RolloutAuditEntry:
        """A person's move (None keeps the current stage / share). Backward: accepted at once. Forward: only
        when ``evidence()`` passes, else the refusal is audited and RolloutRefused lists the failed checks.
        Any accepted move clears ``reverted`` (re-arming is a person's decision)."""
        if stage is not None and not isinstance(stage, Stage):
            try:
                stage = parse_stage(str(stage), "stage")
            except ValueError as exc:
                raise InvalidInput("stage", str(exc).partition(": ")[2]) from None
        share = None if canary_share is None else check_share(canary_share)
        if not actor.strip():
            raise InvalidInput("actor", "must not be empty (who asks is recorded in the audit trail)")
        with self._locked():
            old = self._current(surface)
            new = RolloutState(old.stage if stage is None else stage, old.canary_share if share is None else share)
            judged: GuardrailEvidence | None = None  # a backward move is judged on nothing
            if is_forward(old, new.stage, new.canary_share):
                judged = evidence() if evidence is not None else NO_EVIDENCE
                if not judged.passed:
                    entry = self._record(surface, actor=actor, kind="set", old=old, new=new, reason=reason,
                                         outcome="refused", failed=judged.failed_checks(),
                                         evidence_json=judged.to_json())
                    raise RolloutRefused(
                        f"moving surface {surface!r} forward from {old.stage.value} (share {old.canary_share:g}) "
                        f"to {new.stage.value} (share {new.canary_share:g}) refused by the guardrail: "
                        + "; ".join(entry.failed_checks), entry)
            return self._record(surface, actor=actor, kind="set", old=old, new=new, reason=reason,
                                outcome="accepted", evidence_json="" if judged is None else judged.to_json())

    def revert(self, surface: str, *, reason: str, evidence_json: str = "") -> RolloutAuditEntry | None:
        """The guardrail's automatic move to baseline (``reverted``); None when the surface is at baseline already
        (in any process: the state is re-read under the lock, so workers reverting at once make one entry)."""
        with self._locked():
            old = self._current(surface)
            if old.stage is Stage.BASELINE:
                return None  # idempotent: several decisions may see the bound fail at once
            new = RolloutState(Stage.BASELINE, old.canary_share, reverted=True)
            return self._record(surface, actor=GUARDRAIL_ACTOR, kind="revert", old=old, new=new, reason=reason,
                                outcome="accepted", automatic=True, evidence_json=evidence_json)

    def advance(self, surface: str, *, evidence: Callable[[], GuardrailEvidence],
                reason: str = "auto_advance: the guardrail held",
                expected_sequence: int | None = None) -> RolloutAuditEntry | None:
        """One ``ramp`` step of a canary (the next larger share; live after the last), when the surface's
        ``auto_advance`` is on and ``evidence()`` passes. None otherwise; a failed automatic attempt is not a
        change and is not audited (the guardrail asks again later).

        ``expected_sequence``: the ``sequence`` of the state the guardrail judged; when another process moved the
        surface since (two workers' guardrails holding at once), this is None too, so they make one step, not two."""
        rollout = self.config(surface)
        with self._locked():
            old = self._current(surface)
            if not rollout.auto_advance or old.stage is not Stage.CANARY:
                return None
            if expected_sequence is not None and old.sequence != expected_sequence:
                return None
            larger = [share for share in rollout.ramp if share > old.canary_share]
            new = RolloutState(Stage.CANARY, larger[0]) if larger and larger[0] < 1.0 else \
                RolloutState(Stage.LIVE, old.canary_share)
            judged = evidence()
            if not judged.passed:
                return None
            return self._record(surface, actor=GUARDRAIL_ACTOR, kind="advance", old=old, new=new, reason=reason,
                                outcome="accepted", automatic=True, evidence_json=judged.to_json())

    # --- internals -----------------------------------------------------------------------------------------

    def _current(self, surface: str) -> RolloutState:
        """Under the lock: adopt changes another process made since we last looked, then our state in force."""
        self._adopt()
        return self.state(surface)

    def _adopt(self) -> None:
        approved, self._sequence = self._load()
        in_force = dict(self._in_force)
        for name, state in approved.items():
            if self._approved.get(name) != state:
                in_force[name] = state
        self._approved, self._in_force = approved, in_force
        self._seen_audit = self._audit_stamp()

    def _audit_stamp(self) -> tuple[int, int]:
        return file_stamp(self.audit_path)

    def _record(self, surface: str, *, actor: str, kind: Kind, old: RolloutState, new: RolloutState, reason: str,
                outcome: Outcome, failed: list[str] | None = None, automatic: bool = False,
                evidence_json: str = "") -> RolloutAuditEntry:
        """Appends the entry (fsynced), then persists and serves an accepted one: never in force unaudited.
        Called under ``_locked``."""
        entry = RolloutAuditEntry(
            sequence=self._sequence + 1, time_unix=time.time(), surface=surface, actor=actor, kind=kind,
            old_stage=old.stage, new_stage=new.stage, old_canary_share=old.canary_share,
            new_canary_share=new.canary_share, reason=reason, outcome=outcome, failed_checks=list(failed or []),
            automatic=automatic, reverted=new.reverted, evidence_json=evidence_json,
        )
        self._append(entry)
        self._sequence = entry.sequence
        self._seen_audit = self._audit_stamp()
        if entry.accepted:
            self._approved = {**self._approved, surface: entry.state}
            self._write_snapshot()
            self._in_force = {**self._in_force, surface: entry.state}
        return entry

    def _locked(self) -> AbstractContextManager[None]:
        return admin_lock(self.admin_dir, self._lock)

    def _load(self) -> tuple[dict[str, RolloutState], int]:
        states: dict[str, RolloutState] = {}
        snapshot_sequence = 0
        if self.state_path.exists():
            try:
                data = json.loads(self.state_path.read_text())
                states = {str(name): RolloutState(parse_stage(s["stage"]), check_share(s["canary_share"]),
                                                  bool(s["reverted"]), int(s["sequence"]))
                          for name, s in data["surfaces"].items()}
                snapshot_sequence = int(data["audit_sequence"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # Written atomically, so this is outside damage: rebuild from the audit trail alone.
                log.error("%s is unreadable (%s); rebuilding the rollout state from %s", self.state_path, exc,
                          AUDIT_FILE)
                states, snapshot_sequence = {}, 0
        sequence = snapshot_sequence
        for entry in self._read_audit():
            sequence = max(sequence, entry.sequence)
            if entry.accepted and entry.sequence > snapshot_sequence:
                states[entry.surface] = entry.state  # roll forward: the audit line is the write-ahead record
        return states, sequence

    def _read_audit(self) -> list[RolloutAuditEntry]:
        entries, self.torn_audit_lines = read_lines(self.audit_path, RolloutAuditEntry.from_dict)
        return entries

    def _append(self, entry: RolloutAuditEntry) -> None:
        append_line(self.audit_path, entry.to_json())

    def _write_snapshot(self) -> None:
        surfaces = {name: {"stage": s.stage.value, "canary_share": s.canary_share, "reverted": s.reverted,
                           "sequence": s.sequence} for name, s in sorted(self._approved.items())}
        write_json_atomically(self.state_path, {"audit_sequence": self._sequence, "surfaces": surfaces})



__all__ = ["AUDIT_FILE", "CONFIG_ACTOR", "GuardrailEvidence", "NO_EVIDENCE", "ROLLOUT_FILE", "RolloutAuditEntry",
           "RolloutRefused", "RolloutStore", "check_share", "is_forward", "reach"]
