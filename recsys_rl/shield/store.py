"""Durable shield rules per surface, their versions and audit trail, under ``D/admin/`` (the caps' and rollout's scheme).

* ``admin/shield/<version>.json`` and ``admin/shield/<version>.blocked`` — one immutable rule set per version: the
  rules (TOML names) without the blocked ids, and the blocked ids one per line (sorted), so a million ids cost one
  file read instead of a JSON parse. Versions are the content hash ``rules_from_dict`` computes (the one logged in
  ``DecisionEvent.shield_version``), so a file is written once and re-checked against its name when read. The
  version files are written (fsynced) before the audit line that names them.
* ``shield_audit.jsonl`` — one JSON object per line, appended and fsynced for every change: sequence, time, surface,
  actor, kind (initial / config / set), old and new version, reason, summary. It is the write-ahead log: a version
  is in force only once its line is durable.
* ``shield.json`` — the version in force per surface plus the audit sequence it reflects, replaced atomically.

Start-up precedence (``apply_config``), per configured surface:

1. first start (no entry for the surface): the TOML rules are recorded as "initial configuration" and serve;
2. the TOML's rules changed since the last start (their version differs from the configuration version the trail
   last recorded, by an ``initial`` or ``config`` entry): they are applied as an audited change by actor
   ``config`` — editing the file and restarting is a deliberate change;
3. otherwise the store's version serves: a run-time change (``recsys-rl shield set``) survives restarts.

``refresh()`` adopts changes other processes on the data dir recorded (one ``stat`` when there are none).
Replay reads versions with :func:`load_rules` (read-only: it never creates anything).

Versions stay until ``recsys-rl shield gc --keep N`` (:meth:`ShieldStore.collect_garbage`, :mod:`recsys_rl.shield.gc`),
which keeps per surface the newest N versions the trail put in force, every version in force, every version replaced
less than :data:`GC_GRACE_S` ago (a server adopts a change on its next tick and still logs the old version until
then) and every version a decision in the log names (replay loads the version each decision logged). A version
exists while its ``.json`` does: gc deletes the ``.json`` first, then the ``.blocked``; :func:`load_rules` opens the
``.blocked`` first, then the ``.json``, and reads both through the open files, so it loads a whole version or finds
none (NotFound), never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from recsys_rl.caps.durable import (
    admin_lock, append_line, file_stamp, fsync_dir, read_lines, record_gc, write_json_atomically,
)
from recsys_rl.errors import Aborted, InvalidInput, NotFound
from recsys_rl.shield import bulk
from recsys_rl.shield.edits import describe, diff
from recsys_rl.shield.rules import (
    NO_SHIELD, ShieldConfigError, ShieldRules, blocked_file_bytes, rules_from_dict, rules_to_dict,
)

log = logging.getLogger(__name__)

ADMIN_DIR = "admin"
VERSIONS_DIR = "shield"  # under admin/
STATE_FILE = "shield.json"
AUDIT_FILE = "shield_audit.jsonl"
SERVER_ACTOR = "recsys-rl serve"
GC_GRACE_S = 600.0  # a version replaced less than this ago is kept: servers may still log it (watcher tick, log queue)
CONFIG_ACTOR = "config"

# initial: a surface's first start recorded its TOML rules; config: the TOML's rules changed between starts;
# set: a change over the admin API.
Kind = Literal["initial", "config", "set"]
_KINDS = ("initial", "config", "set")


class ShieldStoreError(RuntimeError):
    """A version the trail names cannot be read back (a damaged or missing version file)."""


@dataclass(frozen=True)
class ShieldAuditEntry:
    """One line of ``shield_audit.jsonl``; ``new_version`` is in force from this entry on."""

    sequence: int
    time_unix: float
    surface: str
    actor: str
    kind: Kind
    old_version: str
    new_version: str
    reason: str
    summary: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShieldAuditEntry:
        kind = str(data["kind"])
        if kind not in _KINDS:
            raise ValueError(f"kind: unknown value {kind!r}")
        return cls(sequence=int(data["sequence"]), time_unix=float(data["time_unix"]), surface=str(data["surface"]),
                   actor=str(data["actor"]), kind=kind, old_version=str(data["old_version"]),  # type: ignore[arg-type]
                   new_version=str(data["new_version"]), reason=str(data.get("reason", "")),
                   summary=str(data.get("summary", "")))


def _version_paths(versions_dir: Path, version: str) -> tuple[Path, Path]:
    return versions_dir / f"{version}.json", versions_dir / f"{version}.blocked"


def load_rules(data_dir: Path | str, version: str) -> ShieldRules:
    """The rules of ``version`` from ``data_dir``'s store ("" is no shield). Read-only.

    Raises NotFound naming the version when the store does not hold it, ShieldStoreError when its files are damaged
    (their content no longer hashes to the name).
    """
    if not version:
        return NO_SHIELD
    versions_dir = Path(data_dir) / ADMIN_DIR / VERSIONS_DIR
    rules_path, blocked_path = _version_paths(versions_dir, version)
    if "/" in version:
        raise NotFound(f"shield rules version {version!r} is not in {versions_dir}")
    try:
        # The .blocked first, then the .json (module docstring: gc deletes them in the other order).
        try:
            blocked_file = open(blocked_path, "rb")  # noqa: SIM115 - closed below, after the .json is open
        except FileNotFoundError:
            blocked_file = None
        try:
            with open(rules_path, "rb") as raw:
                table = json.loads(raw.read())
            blocked = blocked_file.read() if blocked_file is not None else b""
        except FileNotFoundError:
            raise NotFound(f"shield rules version {version!r} is not in {versions_dir}") from None
        finally:
            if blocked_file is not None:
                blocked_file.close()
        table.pop("blocked_items_count", None)
        # Chunked split (one split() of a million lines holds the GIL ~0.1 s); the file is sorted, so
        # rules_from_dict only checks that and re-hashes, a chunk at a time, without sorting.
        table["blocked_items"] = bulk.split_lines(blocked) if blocked else []
        rules = rules_from_dict(table, owned=True)
    except (OSError, ValueError, ShieldConfigError) as exc:
        raise ShieldStoreError(f"shield rules version {version} in {versions_dir} is unreadable: {exc}") from exc
    if rules.version != version:
        raise ShieldStoreError(f"{rules_path}: the files hash to {rules.version}, not {version} (damaged)")
    return rules


def _write_file(path: Path, data: bytes) -> None:
    """``data`` at ``path``, complete or not at all (written beside it, fsynced, renamed)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class ShieldStore:
    """Shield rules per surface in ``data_dir/admin``; thread-safe, writes serialised across processes (flock)."""

    def __init__(self, data_dir: Path | str, *,
                 on_change: Callable[[str, ShieldRules], None] | None = None) -> None:
        """``on_change(surface, rules)`` puts a surface's new rules in force; it is called under the store's lock,
        in audit order, so concurrent changes cannot be put in force out of order."""
        self.on_change = on_change
        self.data_dir = Path(data_dir)
        self.admin_dir = self.data_dir / ADMIN_DIR
        self.versions_dir = self.admin_dir / VERSIONS_DIR
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.admin_dir / STATE_FILE
        self.audit_path = self.admin_dir / AUDIT_FILE
        self._lock = threading.Lock()
        self.torn_audit_lines = 0
        self._rules: dict[str, ShieldRules] = {"": NO_SHIELD}  # loaded versions (a million ids load once)
        self._sequence = 0
        self._versions: dict[str, str] = {}  # surface -> version in force; replaced whole, read without a lock
        self._seen_audit = (0, 0)

    # --- reading -----------------------------------------------------------------------------------------------

    def version(self, surface: str) -> str:
        found = self._versions.get(surface)
        if found is None:
            raise InvalidInput("surface", f"no shield state for surface {surface!r}")
        return found

    def rules(self, surface: str) -> ShieldRules:
        """The rules in force for ``surface``."""
        return self._load(self.version(surface))

    def history(self, surface: str | None = None, *, limit: int = 0) -> list[ShieldAuditEntry]:
        """Audit entries (of ``surface``, or all), oldest first; ``limit`` > 0 keeps the most recent ones."""
        entries = [e for e in self._read_audit() if surface is None or e.surface == surface]
        return entries[-limit:] if limit > 0 else entries

    def refresh(self) -> dict[str, ShieldRules]:
        """Adopts changes other processes recorded; returns the surfaces whose version changed and their rules.
        Cheap when nothing changed (one stat): call it on the model watcher's tick."""
        if self._audit_stamp() == self._seen_audit:
            return {}
        with self._locked():
            return self._adopt()

    # --- start -------------------------------------------------------------------------------------------------

    def apply_config(self, configured: Mapping[str, ShieldRules]) -> dict[str, ShieldRules]:
        """The rules in force per configured surface, by the precedence of the module docstring (audited)."""
        with self._locked():
            self._adopt()
            entries = self._read_audit()
            config_seen = {e.surface: e.new_version for e in entries if e.kind in ("initial", "config")}
            in_force: dict[str, ShieldRules] = {}
            for name, rules in configured.items():
                if name not in self._versions:
                    self._record(name, rules, actor=SERVER_ACTOR, kind="initial", reason="initial configuration",
                                 summary=describe(rules))
                elif config_seen.get(name) != rules.version:
                    self._record(name, rules, actor=CONFIG_ACTOR, kind="config",
                                 reason="the configuration's shield rules changed since the last start",
                                 summary=diff(self._load(self._versions[name]), rules))
                elif self._versions[name] != rules.version:
                    log.info("surface %s: serving shield rules %s set at run time (the configuration's %s is older)",
                             name, self._versions[name], rules.version or "none")
                in_force[name] = self._load(self._versions[name])
            for name in sorted(set(self._versions) - set(configured)):
                log.warning("shield rules of surface %r ignored: the surface is not configured", name)
            return in_force

    # --- changes -----------------------------------------------------------------------------------------------

    def set(self, surface: str, change: Callable[[ShieldRules], tuple[ShieldRules, str]], *, actor: str,
            reason: str = "", expected_version: str = "") -> tuple[ShieldAuditEntry, ShieldRules]:
        """Applies ``change(rules in force) -> (new rules, summary)`` under the lock and records it.

        ``expected_version`` (when not empty) must be the version in force, else Aborted and nothing changes: a
        read-modify-write that lost a race to another admin (in any process) does not overwrite their change.
        Returns the audit entry and the new rules (put in force through ``on_change`` before the lock is released).
        """
        if not actor.strip():
            raise InvalidInput("actor", "must not be empty (who asks is recorded in the audit trail)")
        with self._locked():
            self._adopt()
            current_version = self.version(surface)
            if expected_version and expected_version != current_version:
                raise Aborted(f"expected_version: surface {surface!r} has shield rules {current_version or 'none'}, "
                              f"not {expected_version} (another change came first; read them again)")
            rules, summary = change(self._load(current_version))
            return self._record(surface, rules, actor=actor, kind="set", reason=reason, summary=summary), rules

    # --- retention -------------------------------------------------------------------------------------------

    def collect_garbage(self, keep: int, referenced: Mapping[str, str], *, actor: str, reason: str = "",
                        dry_run: bool = False, now: float | None = None) -> tuple[list[str], dict[str, str]]:
        """Deletes the stored versions no rule of the module docstring keeps; (deleted, kept version -> why).

        ``referenced``: version -> where the log names it (``recsys_rl.shield.gc.referenced_versions``, read before
        this call: a decision logged since then names a version in force or replaced within the grace period).
        Under the admin lock; audited in ``D/admin/gc_audit.jsonl`` before anything is deleted.
        """
        if keep < 1:
            raise InvalidInput("--keep", f"must be at least 1 (the versions in force are always kept), got {keep}")
        now = time.time() if now is None else now
        with self._locked():
            self._adopt()
            kept: dict[str, str] = {}
            for surface, version in self._versions.items():
                kept.setdefault(version, f"in force on {surface}")
            newest: dict[str, list[str]] = {}
            for entry in reversed(self._read_audit()):  # newest first
                put = newest.setdefault(entry.surface, [])
                if entry.new_version not in put and len(put) < keep:
                    put.append(entry.new_version)
                    kept.setdefault(entry.new_version, f"among the newest {keep} of {entry.surface}")
                if now - entry.time_unix < GC_GRACE_S:
                    kept.setdefault(entry.old_version, f"replaced less than {GC_GRACE_S:.0f} s ago")
            for version, where in referenced.items():
                kept.setdefault(version, f"named by decisions in {where}")
            kept.pop("", None)
            stored = sorted({p.name.split(".")[0] for p in self.versions_dir.iterdir()
                             if p.suffix in (".json", ".blocked") and not p.name.startswith(".")})
            doomed = [v for v in stored if v not in kept]
            kept = {v: kept[v] for v in stored if v in kept}
            if dry_run or not doomed:
                return doomed, kept
            record_gc(self.data_dir, {"store": "shield", "actor": actor, "reason": reason, "keep": keep,
                                      "deleted": doomed, "kept": kept})
            for version in doomed:
                rules_path, blocked_path = _version_paths(self.versions_dir, version)
                rules_path.unlink(missing_ok=True)  # from here on the version is gone (load_rules: NotFound)
                blocked_path.unlink(missing_ok=True)
                self._rules.pop(version, None)
            fsync_dir(self.versions_dir)
            log.info("shield gc by %s: %d versions deleted, %d kept", actor, len(doomed), len(kept))
            return doomed, kept

    # --- internals ---------------------------------------------------------------------------------------------

    def _load(self, version: str) -> ShieldRules:
        rules = self._rules.get(version)
        if rules is None:
            try:
                rules = load_rules(self.data_dir, version)
            except NotFound as exc:
                raise ShieldStoreError(f"{exc} (named by {self.audit_path})") from exc
            self._rules[version] = rules
        return rules

    def _save_version(self, rules: ShieldRules) -> None:
        """The version's files, before any audit line names them (immutable: an existing version is kept)."""
        if not rules.version or rules.version in self._rules:
            return
        rules_path, blocked_path = _version_paths(self.versions_dir, rules.version)
        if not rules_path.exists():
            _write_file(blocked_path, blocked_file_bytes(rules.blocked_items))
            table = rules_to_dict(rules, blocked_items=False) | {"blocked_items_count": len(rules.blocked_items)}
            _write_file(rules_path, (json.dumps(table, indent=2, sort_keys=True) + "\n").encode())
            fsync_dir(self.versions_dir)
        self._rules[rules.version] = rules

    def _record(self, surface: str, rules: ShieldRules, *, actor: str, kind: Kind, reason: str,
                summary: str) -> ShieldAuditEntry:
        """Version files, then the audit line (fsynced), then the snapshot. Called under ``_locked``."""
        self._save_version(rules)
        entry = ShieldAuditEntry(sequence=self._sequence + 1, time_unix=time.time(), surface=surface, actor=actor,
                                 kind=kind, old_version=self._versions.get(surface, ""), new_version=rules.version,
                                 reason=reason, summary=summary)
        append_line(self.audit_path, entry.to_json())
        self._sequence = entry.sequence
        self._seen_audit = self._audit_stamp()
        self._versions = {**self._versions, surface: rules.version}
        if self.on_change is not None:
            self.on_change(surface, rules)
        write_json_atomically(self.state_path, {"audit_sequence": self._sequence, "surfaces": {
            name: {"version": version} for name, version in sorted(self._versions.items())}})
        return entry

    def _adopt(self) -> dict[str, ShieldRules]:
        """Under the lock: the snapshot rolled forward with newer audit entries; returns what changed."""
        versions: dict[str, str] = {}
        snapshot_sequence = 0
        if self.state_path.exists():
            try:
                data = json.loads(self.state_path.read_text())
                versions = {str(n): str(s["version"]) for n, s in data["surfaces"].items()}
                snapshot_sequence = int(data["audit_sequence"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("%s is unreadable (%s); rebuilding from %s", self.state_path, exc, AUDIT_FILE)
                versions, snapshot_sequence = {}, 0
        sequence = snapshot_sequence
        for entry in self._read_audit():
            sequence = max(sequence, entry.sequence)
            if entry.sequence > snapshot_sequence:
                versions[entry.surface] = entry.new_version  # roll forward: the audit line is the write-ahead record
        changed = {name: self._load(v) for name, v in versions.items() if self._versions.get(name) != v}
        self._versions, self._sequence = versions, sequence
        self._seen_audit = self._audit_stamp()
        if self.on_change is not None:
            for name, rules in changed.items():
                self.on_change(name, rules)
        return changed

    def _audit_stamp(self) -> tuple[int, int]:
        return file_stamp(self.audit_path)

    def _read_audit(self) -> list[ShieldAuditEntry]:
        entries, self.torn_audit_lines = read_lines(self.audit_path, ShieldAuditEntry.from_dict)
        return entries

    def _locked(self) -> AbstractContextManager[None]:
        return admin_lock(self.admin_dir, self._lock)


__all__ = ["AUDIT_FILE", "CONFIG_ACTOR", "GC_GRACE_S", "STATE_FILE", "ShieldAuditEntry", "ShieldStore", "ShieldStoreError",
           "load_rules"]
