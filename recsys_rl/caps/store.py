"""Durable exploration caps and their audit trail, under ``D/admin/``.

* ``audit.jsonl`` — one JSON object per line, appended and fsynced for every cap change *and* every refused
  raise: sequence, time, surface, actor, old cap, new (requested) cap, reason, evidence digest, outcome and
  the failed checks of a refusal. It is the write-ahead log: an entry is durable before the change applies.
* ``caps.json`` — the caps in force per surface plus the audit sequence they reflect, replaced atomically
  (temporary file, fsync, rename, fsync of the directory) after each accepted change.

On load the snapshot is rolled forward with any accepted audit entry newer than it, so a crash between the
two writes loses nothing; a torn last audit line (crash mid-append) is skipped and counted.

One state per data dir: every process serving it (``serve --workers N``) holds a CapStore on it. Writes are
serialised by ``flock`` on ``admin/.lock`` and re-read the disk first (:meth:`CapStore.change` judges a change
against the cap in force *after* adopting what other processes recorded), so no update is lost and sequences stay
strictly increasing. :meth:`CapStore.refresh` (one ``stat`` when nothing changed; the model watcher's 0.25 s tick
and every admin read call it) adopts other processes' accepted changes and puts each in force through
``on_change``, in audit order, exactly as the process that accepted it did.

Start-up (``apply_config``), per configured surface — the configuration is an input that changes the shared state
only when *it* changed, as for shield rules, so a restarted worker serves what the running ones serve:

1. first start (no cap recorded): the configured cap is recorded as "initial configuration" and serves;
2. the configured cap differs from the one the trail last recorded (by an ``initial`` or ``config`` entry): at or
   below the cap in force it is applied as an audited change by ``recsys-rl serve (configuration)``; above it, it is
   not applied (only the gate raises caps, invariant 2): a refused ``config`` entry records it as seen, with one
   warning naming the key, so the next start does not refuse it again;
3. otherwise the recorded cap serves: a gate-approved raise above the configured cap survives every restart.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

from recsys_rl.caps.durable import admin_lock, append_line, file_stamp, read_lines, write_json_atomically

log = logging.getLogger(__name__)

ADMIN_DIR = "admin"
CAPS_FILE = "caps.json"
AUDIT_FILE = "audit.jsonl"

SERVER_ACTOR = "recsys-rl serve"
CONFIG_ACTOR = "recsys-rl serve (configuration)"
Outcome = Literal["accepted", "refused"]
# initial: a surface's first start recorded its configured cap; config: the configured cap changed between starts
# (accepted when at or below the cap in force, else refused); set: a change over the admin API.
Kind = Literal["initial", "config", "set"]
_KINDS = ("initial", "config", "set")
CONFIG_RAISE_REFUSED = "configuration: a cap goes up only with a passing gate report (`recsys-rl caps set`)"
# Puts a surface's accepted cap in force (DecisionService: the surface's policy); called under the store's lock.
OnChange = Callable[[str, float], None]


@dataclass(frozen=True)
class AuditEntry:
    """One line of ``audit.jsonl``. ``new_cap`` is the cap asked for; in force only when accepted."""

    sequence: int
    time_unix: float
    surface: str
    actor: str
    old_cap: float
    new_cap: float
    reason: str
    evidence_digest: str  # sha256 hex of the evidence as sent; "" when none was sent
    outcome: Outcome
    failed_checks: list[str] = field(default_factory=list)
    kind: Kind = "set"

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"

    @property
    def records_configuration(self) -> bool:
        """Whether ``new_cap`` is the configured cap seen at a start (applied or not)."""
        return self.kind in ("initial", "config")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> AuditEntry:
        outcome = str(data["outcome"])
        if outcome not in ("accepted", "refused"):
            raise ValueError(f"outcome: unknown value {outcome!r}")
        kind = str(data.get("kind") or _older_kind(data))
        if kind not in _KINDS:
            raise ValueError(f"kind: unknown value {kind!r}")
        return cls(
            sequence=int(data["sequence"]), time_unix=float(data["time_unix"]),  # type: ignore[arg-type]
            surface=str(data["surface"]), actor=str(data["actor"]),
            old_cap=float(data["old_cap"]), new_cap=float(data["new_cap"]),  # type: ignore[arg-type]
            reason=str(data.get("reason", "")), evidence_digest=str(data.get("evidence_digest", "")),
            outcome=outcome,  # type: ignore[arg-type]
            failed_checks=[str(c) for c in data.get("failed_checks", [])],  # type: ignore[union-attr]
            kind=kind,  # type: ignore[arg-type]
        )


def _older_kind(data: Mapping[str, object]) -> Kind:
    """Trails written before entries had a kind: the first start's entry is the only one the server made."""
    initial = data.get("actor") == SERVER_ACTOR and data.get("reason") == "initial configuration"
    return "initial" if initial else "set"


def check_cap(cap: float, field_name: str = "cap") -> float:
    """``cap`` as a float in [0, 1]; ValueError naming ``field_name`` otherwise (NaN included)."""
    value = float(cap)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{field_name}: must be a number in [0, 1], got {cap!r}")
    return value



class CapStore:
    """Caps in force per surface and the audit log of ``data_dir``; thread- and process-safe, one state per data dir."""

    def __init__(self, data_dir: Path | str, *, on_change: OnChange | None = None) -> None:
        """``on_change(surface, cap)`` puts an accepted cap in force: this store's own changes and, on
        :meth:`refresh`, other processes' ones (under the lock, in audit order)."""
        self.admin_dir = Path(data_dir) / ADMIN_DIR
        self.admin_dir.mkdir(parents=True, exist_ok=True)
        self.caps_path = self.admin_dir / CAPS_FILE
        self.audit_path = self.admin_dir / AUDIT_FILE
        self.on_change = on_change
        self._lock = threading.Lock()
        self.torn_audit_lines = 0
        with self._locked():
            self._caps, self._sequence, _ = self._load()
            self._seen_audit = self._audit_stamp()

    # --- reading -------------------------------------------------------------------------------------------

    def caps(self) -> dict[str, float]:
        """Caps recorded by accepted changes, per surface (surfaces never changed are absent)."""
        with self._lock:
            return dict(self._caps)

    def cap(self, surface: str) -> float | None:
        with self._lock:
            return self._caps.get(surface)

    def history(self, surface: str | None = None, *, limit: int = 0) -> list[AuditEntry]:
        """Audit entries (of ``surface``, or all), oldest first; ``limit`` > 0 keeps the most recent ones."""
        entries = [e for e in self._read_audit() if surface is None or e.surface == surface]
        return entries[-limit:] if limit > 0 else entries

    def refresh(self) -> dict[str, float]:
        """Adopts the changes other processes on this data dir accepted since we last looked; returns the surfaces
        whose cap they changed (the last cap of each). Cheap when there are none (one ``stat``)."""
        if self._audit_stamp() == self._seen_audit:
            return {}
        with self._locked():
            return self._adopt()

    # --- start ---------------------------------------------------------------------------------------------

    def apply_config(self, configured: Mapping[str, float]) -> dict[str, float]:
        """The cap to serve per configured surface, by the start-up rules of the module docstring (audited).

        Under the lock, after adopting the disk: workers starting together with a changed configuration record
        it once (the second one finds it recorded), and every running process adopts an applied change.
        """
        with self._locked():
            self._adopt()
            seen = {e.surface: e.new_cap for e in self._read_audit() if e.records_configuration}
            for name in sorted(set(self._caps) - set(configured)):
                log.warning("approved cap %g of surface %r ignored: the surface is not configured",
                            self._caps[name], name)
            in_force: dict[str, float] = {}
            for name, cap in configured.items():
                cap = check_cap(cap, f"surfaces.{name}.exploration_cap")
                current = self._caps.get(name)
                if current is None:
                    self._record(AuditEntry(
                        sequence=self._sequence + 1, time_unix=time.time(), surface=name, actor=SERVER_ACTOR,
                        old_cap=cap, new_cap=cap, reason="initial configuration", evidence_digest="",
                        outcome="accepted", kind="initial"))
                elif seen.get(name) == cap:
                    if cap != current:
                        log.info("surface %s: serving cap %g recorded at run time (surfaces.%s.exploration_cap is "
                                 "%g, unchanged since the last start)", name, current, name, cap)
                else:
                    self._apply_changed_config(name, cap, current, seen.get(name))
                in_force[name] = self._caps[name]
            return in_force

    def _apply_changed_config(self, name: str, cap: float, current: float, last: float | None) -> None:
        """A configured cap that differs from the last one recorded: applied at or below ``current``, else recorded
        as a refused raise. Called under ``_locked``."""
        key = f"surfaces.{name}.exploration_cap"
        since = "" if last is None else f" (was {last:g})"
        refused = cap > current
        self._record(AuditEntry(
            sequence=self._sequence + 1, time_unix=time.time(), surface=name, actor=CONFIG_ACTOR, old_cap=current,
            new_cap=cap, reason=f"the configuration's {key} changed to {cap:g}{since} since the last start",
            evidence_digest="", outcome="refused" if refused else "accepted",
            failed_checks=[CONFIG_RAISE_REFUSED] if refused else [], kind="config"))
        if refused:
            log.warning("surface %s: configured %s %g is above the cap in force %g and is not applied; serving %g "
                        "(raise it with `recsys-rl caps set` and gate evidence)", name, key, cap, current, current)
        else:
            log.info("surface %s: configured %s %g applied (was %g), audited", name, key, cap, current)

    # --- writing -------------------------------------------------------------------------------------------

    def change(self, surface: str, new_cap: float, *, in_force: Callable[[str], float],
               judge: Callable[[float], list[str]], actor: str, reason: str, evidence_digest: str) -> AuditEntry:
        """One cap change that cannot lose a race to another process: under the cross-process lock, what other
        processes accepted is adopted (put in force through ``on_change``) first; then ``old = in_force(surface)``
        is the cap serving now and ``judge(old)`` lists the failed checks ([] = accept). The entry is audited
        (refused when a check failed) and an accepted cap put in force before the lock is released."""
        new_cap = check_cap(new_cap, "new_cap")
        with self._locked():
            self._adopt()
            old = in_force(surface)
            failed = judge(old)
            return self._record(AuditEntry(
                sequence=self._sequence + 1, time_unix=time.time(), surface=surface, actor=actor, old_cap=old,
                new_cap=new_cap, reason=reason, evidence_digest=evidence_digest,
                outcome="refused" if failed else "accepted", failed_checks=list(failed)))

    def record(self, *, surface: str, actor: str, old_cap: float, new_cap: float, reason: str,
               evidence_digest: str, outcome: Outcome, failed_checks: list[str] | None = None) -> AuditEntry:
        """Append an audit entry (fsynced) and, when accepted, persist ``new_cap`` as the surface's cap.

        Returns the entry once it is durable; an accepted cap is put in force (``on_change``) only after that,
        so no change is ever in force without its audit line. A change judged on the cap in force goes through
        :meth:`change` instead (``old_cap`` here is the caller's word).
        """
        new_cap = check_cap(new_cap, "new_cap")
        with self._locked():
            self._adopt()  # another process may have appended since we looked: continue its sequence
            return self._record(AuditEntry(
                sequence=self._sequence + 1, time_unix=time.time(), surface=surface, actor=actor,
                old_cap=float(old_cap), new_cap=new_cap, reason=reason, evidence_digest=evidence_digest,
                outcome=outcome, failed_checks=list(failed_checks or []),
            ))

    # --- internals -----------------------------------------------------------------------------------------

    def _locked(self) -> AbstractContextManager[None]:
        return admin_lock(self.admin_dir, self._lock)

    def _record(self, entry: AuditEntry) -> AuditEntry:
        """The audit line (fsynced), then the snapshot, then ``on_change``. Called under ``_locked``."""
        self._append(entry)
        self._sequence = entry.sequence
        self._seen_audit = self._audit_stamp()
        if entry.accepted:
            self._caps[entry.surface] = entry.new_cap
            self._write_snapshot()
            if self.on_change is not None:
                self.on_change(entry.surface, entry.new_cap)
        return entry

    def _adopt(self) -> dict[str, float]:
        """Under the lock: the disk's caps; each accepted entry newer than what we had is put in force, in order."""
        seen = self._sequence
        caps, sequence, entries = self._load()
        newer = [e for e in entries if e.sequence > seen and e.accepted]
        self._caps, self._sequence = caps, sequence
        self._seen_audit = self._audit_stamp()
        changed: dict[str, float] = {}
        for entry in newer:
            changed[entry.surface] = entry.new_cap
            if self.on_change is not None:
                self.on_change(entry.surface, entry.new_cap)
        return changed

    def _audit_stamp(self) -> tuple[int, int]:
        return file_stamp(self.audit_path)

    def _load(self) -> tuple[dict[str, float], int, list[AuditEntry]]:
        """The caps on disk (snapshot rolled forward), the last audit sequence and the audit entries read."""
        caps: dict[str, float] = {}
        snapshot_sequence = 0
        if self.caps_path.exists():
            try:
                data = json.loads(self.caps_path.read_text())
                caps = {str(k): check_cap(v, f"{CAPS_FILE}: caps.{k}") for k, v in data["caps"].items()}
                snapshot_sequence = int(data["audit_sequence"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # The snapshot is written atomically, so this is outside damage: rebuild from the audit log.
                log.error("%s is unreadable (%s); rebuilding the caps from %s", self.caps_path, exc, AUDIT_FILE)
                caps, snapshot_sequence = {}, 0
        sequence = snapshot_sequence
        entries = self._read_audit()
        for entry in entries:
            sequence = max(sequence, entry.sequence)
            if entry.accepted and entry.sequence > snapshot_sequence:
                caps[entry.surface] = entry.new_cap  # roll forward: the audit line is the write-ahead record
        return caps, sequence, entries

    def _read_audit(self) -> list[AuditEntry]:
        entries, self.torn_audit_lines = read_lines(self.audit_path, AuditEntry.from_dict)
        return entries

    def _append(self, entry: AuditEntry) -> None:
        append_line(self.audit_path, entry.to_json())

    def _write_snapshot(self) -> None:
        write_json_atomically(self.caps_path, {"audit_sequence": self._sequence,
                                               "caps": dict(sorted(self._caps.items()))})


def effective_cap(configured: float, recorded: float | None) -> float:
    """The cap in force: the one the trail recorded (changes, and configurations applied at start), else the
    configured one (a surface that never started).

    Never ``min(configured, recorded)``: after a gate-approved raise above the configured cap, every process serves
    the raised cap, and a report must be judged against it.
    """
    return configured if recorded is None else recorded
