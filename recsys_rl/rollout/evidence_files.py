"""Every process serving a data dir publishes its rollout evidence; admin reads and forward moves read them all.

``serve --workers N`` runs N processes, each with its own shadow statistics and canary guardrails (fed by the
decisions it served and the outcomes it attributed). So that ``rollout show`` and a forward move judge the whole
fleet's evidence whichever worker takes the call, each process writes a snapshot to ``D/run/evidence/<pid>.json``
(temporary file + rename: a reader sees a whole snapshot or the previous one):

* what: per surface, the rollout state's audit ``sequence`` the snapshot refers to, the shadow sums
  (``serving.shadow.ShadowSums``) and the running guardrail's share (``rollout.guardrail.GuardrailShare``);
* when: checked every ``PUBLISH_CHECK_S`` and written when it changed, and at least every ``HEARTBEAT_S`` (so a
  reader can wait for a snapshot made after a moment, ``FleetRollout.settled``); removed on clean exit.

Who counts (``read_members``): with workers, the parent's ``D/run/workers.json`` (``ranker.workers``) names the
N workers and the pid serving as each; a worker not serving, or whose snapshot is missing or older than
``STALE_S``, is a member without evidence (named, and it blocks forward moves). Without a live ``workers.json``
(one process), the members are this process and any other process whose snapshot is fresh and whose pid is alive;
files of dead processes are ignored (and removed when a publisher starts). The reader's own evidence is taken from
memory, never from its file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_rl.rollout.guardrail import GuardrailShare
from recsys_rl.serving.dirlock import pid_alive
from recsys_rl.serving.shadow import ShadowSums

log = logging.getLogger(__name__)

EVIDENCE_DIR = ("run", "evidence")
WORKERS_FILE = ("run", "workers.json")  # the parent's status (ranker.workers.layout): workers, pids, stopping
PUBLISH_CHECK_S = 0.05  # how often a publisher looks for a change
HEARTBEAT_S = 0.25  # the longest a publisher goes without writing (the model watcher's tick)
STALE_S = 2.0  # a snapshot older than this is not evidence (its process is stuck or gone)


@dataclass(frozen=True)
class SurfaceEvidence:
    """One process's evidence for one surface."""

    rollout_sequence: int  # the audit sequence of the rollout state this process served when it made the snapshot
    shadow: ShadowSums
    guardrail: GuardrailShare | None  # None: no canary guardrail running in this process


@dataclass(frozen=True)
class ProcessEvidence:
    pid: int
    as_of_unix: float  # when the snapshot was made (time.time())
    surfaces: Mapping[str, SurfaceEvidence]

    def body(self) -> dict[str, Any]:
        """Everything but the time: equal bodies mean nothing changed."""
        return {"pid": self.pid, "surfaces": {
            name: {"rollout_sequence": s.rollout_sequence, "shadow": s.shadow.to_dict(),
                   "guardrail": None if s.guardrail is None else s.guardrail.to_dict()}
            for name, s in sorted(self.surfaces.items())}}

    @classmethod
    def from_json(cls, text: str) -> ProcessEvidence:
        """Raises ValueError (or KeyError/TypeError) for anything that is not a snapshot."""
        data = json.loads(text)
        surfaces = {str(name): SurfaceEvidence(int(s["rollout_sequence"]), ShadowSums.from_dict(s["shadow"]),
                                               None if s["guardrail"] is None else
                                               GuardrailShare.from_dict(s["guardrail"]))
                    for name, s in data["surfaces"].items()}
        return cls(int(data["pid"]), float(data["as_of_unix"]), surfaces)


@dataclass(frozen=True)
class Member:
    """One process of the fleet as a reader sees it: its evidence, or why there is none."""

    label: str  # "worker-K", or "pid P" without workers
    pid: int | None
    evidence: ProcessEvidence | None
    problem: str = ""  # "" when ``evidence`` is usable; else e.g. "not serving", "no evidence published"
    own: bool = False  # the reader itself (evidence from memory)

    def surface(self, name: str) -> SurfaceEvidence | None:
        return None if self.evidence is None else self.evidence.surfaces.get(name)


def evidence_dir(data_dir: Path) -> Path:
    return Path(data_dir).joinpath(*EVIDENCE_DIR)


def evidence_path(data_dir: Path, pid: int) -> Path:
    return evidence_dir(data_dir) / f"{pid}.json"


class EvidencePublisher:
    """Writes ``build()``'s snapshot to ``D/run/evidence/<pid>.json`` when it changes (checked every
    ``PUBLISH_CHECK_S``) and at least every ``HEARTBEAT_S``; ``stop`` removes the file."""

    def __init__(self, data_dir: Path, build: Callable[[], ProcessEvidence]) -> None:
        self.path = evidence_path(data_dir, os.getpid())
        self._build = build
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rollout-evidence", daemon=True)
        self._last_body: dict[str, Any] | None = None
        self._last_write = 0.0

    def start(self) -> EvidencePublisher:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead(self.path.parent)
        self.publish()
        self._thread.start()
        return self

    def publish(self, *, force: bool = True) -> None:
        evidence = self._build()
        body = evidence.body()
        now = time.monotonic()
        if not force and body == self._last_body and now - self._last_write < HEARTBEAT_S:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:  # run-time state, not a record: no fsync (a crash loses it along with the process's memory)
            tmp.write_text(json.dumps(body | {"as_of_unix": evidence.as_of_unix}, sort_keys=True))
            tmp.replace(self.path)
        except OSError as exc:  # the fleet then reads this process as stale; serving is unaffected
            log.warning("cannot publish rollout evidence to %s: %s", self.path, exc)
            return
        self._last_body, self._last_write = body, now

    def _loop(self) -> None:
        while not self._stop.wait(PUBLISH_CHECK_S):
            try:
                self.publish(force=False)
            except Exception:  # noqa: BLE001 - the publisher must outlive a bad tick
                log.exception("publishing rollout evidence failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self.path.unlink(missing_ok=True)


def _remove_dead(directory: Path) -> None:
    """Removes snapshots of processes that are gone (a killed worker leaves its file behind)."""
    for path in directory.glob("*.json"):
        if path.stem.isdigit() and not pid_alive(int(path.stem)):
            path.unlink(missing_ok=True)


def _read(data_dir: Path, pid: int, now: float) -> tuple[ProcessEvidence | None, str]:
    try:
        evidence = ProcessEvidence.from_json(evidence_path(data_dir, pid).read_text())
    except FileNotFoundError:
        return None, "no evidence published"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable evidence ({exc})"
    age = now - evidence.as_of_unix
    if age > STALE_S:
        return None, f"evidence {age:.1f} s old"
    return evidence, ""


def _workers(data_dir: Path) -> dict[str, Any] | None:
    """The parent's ``workers.json`` while the parent lives and is not stopping (None otherwise)."""
    try:
        status = json.loads(Path(data_dir).joinpath(*WORKERS_FILE).read_text())
        parent = int(status["parent_pid"])
        workers = int(status["workers"])
        pids = {int(k): int(v) for k, v in dict(status.get("pids", {})).items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if status.get("stopping") or not pid_alive(parent):
        return None
    return {"workers": workers, "pids": pids}


def read_members(data_dir: Path, own: ProcessEvidence, *, now: float | None = None) -> list[Member]:
    """The fleet serving ``data_dir`` as this process sees it (module docstring), this process included."""
    now = time.time() if now is None else now
    status = _workers(data_dir)
    if status is not None:
        members = []
        pids: dict[int, int] = status["pids"]
        for index in range(status["workers"]):
            pid = pids.get(index)
            label = f"worker-{index}"
            if pid == own.pid:
                members.append(Member(label, pid, own, own=True))
            elif pid is None:
                members.append(Member(label, None, None, "not serving"))
            else:
                evidence, problem = _read(data_dir, pid, now)
                members.append(Member(label, pid, evidence, problem))
        if own.pid not in pids.values():  # e.g. a worker the parent has not yet marked serving
            members.append(Member(f"pid {own.pid}", own.pid, own, own=True))
        return members
    members = [Member(f"pid {own.pid}", own.pid, own, own=True)]
    directory = evidence_dir(data_dir)
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        if not path.stem.isdigit() or int(path.stem) == own.pid or not pid_alive(int(path.stem)):
            continue
        evidence, problem = _read(data_dir, int(path.stem), now)
        if evidence is not None:  # without workers.json only live, fresh processes are members
            members.append(Member(f"pid {path.stem}", int(path.stem), evidence, problem))
    return members


__all__ = ["EVIDENCE_DIR", "EvidencePublisher", "HEARTBEAT_S", "Member", "ProcessEvidence", "STALE_S",
           "SurfaceEvidence", "evidence_path", "pid_alive", "read_members"]
