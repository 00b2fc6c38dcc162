"""The decision service: surfaces' policies, the log writer and the online learners behind one object.

Usable without gRPC (``ranker`` is a thin layer over it). One ``rank`` call: resolve the surface, let its policy
decide (VW scores ⊕ long-term value → capped exploration, or the baseline on failure), put the DecisionEvent in
the log writer's queue, track it for outcome attribution, and only then return (invariant 3).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from google.protobuf.message import Message

from logging_schema.writer import DeferredRecord, LogQueueFull, LogUnavailable, LogWriter
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.caps.store import CapStore
from recsys_rl.catalog.store import CatalogStore, CatalogStoreError
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.config import ConfigError, ServiceConfig, SurfaceConfig
from recsys_rl.rollout.config import RolloutState, Stage
from recsys_rl.rollout.store import GuardrailEvidence, RolloutStore
from recsys_rl.catalog.items import CatalogVersion
from recsys_rl.errors import InvalidInput, NotFound, NotReady, Overloaded, PreconditionFailed
from recsys_rl.retrieval.index import RetrievalIndexes
from recsys_rl.retrieval.request import RetrievalResult, retrieve
from recsys_rl.retrieval.users import UserEmbeddings
from recsys_rl.serving.event_ids import random_hex
from recsys_rl.serving.exploration import draw_key
from recsys_rl.serving.learner import ModelWatcher
from recsys_rl.metrics.hooks import NO_METRICS, ServingHooks
from recsys_rl.serving.log_guard import LOG_UNAVAILABLE, LogGuard
from recsys_rl.serving.outcomes import OutcomeAck, OutcomeTracker
from recsys_rl.rollout.evidence_files import EvidencePublisher, ProcessEvidence, SurfaceEvidence, read_members
from recsys_rl.rollout.fleet import FleetRollout
from recsys_rl.rollout.guardrail import Guardrail, GuardrailSnapshot
from recsys_rl.rollout.monitor import RolloutMonitor, evidence_json
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.serving.policy import Decision, LongTermValue, NoLongTermValue, SurfacePolicy, decision_record
from recsys_rl.serving.requests import validate_outcome_request, validate_rank_request
from recsys_rl.serving.shadow import ShadowStats, ShadowTracker
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.registry import Checkpoint, ModelRegistry
from recsys_rl.serving.supervisor import LearnerSupervisor
from recsys_rl.shield.edits import ShieldEdit
from recsys_rl.shield.rules import ShieldRules
from recsys_rl.shield.store import ShieldAuditEntry, ShieldStore


log = logging.getLogger(__name__)

# How long close() lets the learner learn what is due and publish before it is killed (part of SIGTERM's 10 s).
LEARNER_STOP_S = 2.5
# The longest a forward rollout move waits for the other workers' evidence to catch up (settle_fleet): a heartbeat
# is 0.25 s, so 1 s only runs out when a worker is stuck or gone (it is then judged on what it last published).
SETTLE_S = 1.0

@dataclass
class _Surface:
    config: SurfaceConfig
    policy: SurfacePolicy
    tracker: OutcomeTracker
    shadow: ShadowTracker


class DecisionService:
    """Owns everything a running server decides with. Thread-safe: Rank/ReportOutcome run on a thread pool."""

    def __init__(self, config: ServiceConfig, data_dir: Path, *,
                 learner: Literal["process", "thread", "off"] = "process", watch_models: bool = True,
                 metrics: ServingHooks = NO_METRICS, log_dir: Path | None = None, event_id_prefix: str = "") -> None:
        """``learner``: "process" (production: learning never holds this process's GIL), "thread" (tests),
        "off". ``watch_models``: poll the registry and hot-swap newly published versions. ``metrics``: the
        request-path hooks (recsys_rl.metrics; the servicer calls them too), a no-op unless metrics are on.

        ``log_dir``: this process's log stream (default ``data_dir/logs``; a worker of ``serve --workers N`` writes
        ``data_dir/logs/worker-K``); open decisions are recovered from this stream only. ``event_id_prefix``: put
        before every event id (a worker's ``wK.``, so any worker can tell which one holds a decision)."""
        self.config = config
        self.metrics = metrics
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir / "logs"
        self._event_id_prefix = event_id_prefix
        self.registry = ModelRegistry(self.data_dir / "models")
        self._surfaces: dict[str, _Surface] = {}
        self._closed = threading.Event()
        # Overload counters (for the metrics): Rank requests that waited past their decision budget and got the
        # baseline at once, and those refused RESOURCE_EXHAUSTED (``refuse_overloaded``, e.g. by the server).
        self._overload_lock = threading.Lock()
        self.overload_baseline = 0
        self.overload_refused = 0
        self._long_term = self._load_long_term(config)
        self._refused_long_term: set[str] = set()
        # Versions that failed to load, per surface: refused once (logged), never retried every watcher tick.
        self._refused_models: dict[str, set[str]] = {name: set() for name in config.surfaces}
        for name, surface in config.surfaces.items():
            self._surfaces[name] = self._load_surface(surface)
        # Caps, rollout stages and shield rules are one state per data dir, shared by every process serving it:
        # each store adopts other processes' changes on the watcher tick and before every admin read
        # (refresh_admin_state) and judges its own changes against the disk under the admin lock.
        self.caps = CapStore(self.data_dir, on_change=self._put_cap_in_force)
        self._apply_approved_caps()
        self.rollout = RolloutStore(self.data_dir)  # stages survive restarts; a changed config moves them back only
        self.rollout.apply_config(config.surfaces)
        # Shield rules survive restarts; a TOML whose rules changed since the last start is an audited change.
        self.shields = ShieldStore(self.data_dir, on_change=self._put_shield_in_force)
        for name, rules in self.shields.apply_config({n: s.shield for n, s in config.surfaces.items()}).items():
            self._surfaces[name].policy.set_shield(rules)
        # The item catalog (one per data dir): completes candidates sent by id; versions adopted on the watcher tick.
        self.catalog = CatalogStore(self.data_dir)
        # Retrieval indexes of the catalog version in force, built at start (here) and then in the background on
        # every new version; a request reads the one built (recsys_rl/retrieval/index.py).
        self.indexes = RetrievalIndexes()
        self._retrieval_configs = [s.retrieval for s in config.surfaces.values() if s.retrieval is not None]
        # The query kept per user id, per retrieval surface: fed by ReportOutcome, in memory only (users.py).
        self.user_queries = {name: UserEmbeddings(s.retrieval.user_embeddings, s.retrieval.user_decay)
                             for name, s in config.surfaces.items()
                             if s.retrieval is not None and s.catalog and s.retrieval.user_embeddings > 0}
        self.indexes.ensure(self.catalog.current, self._retrieval_configs, wait=True)
        self._recover_open_decisions()
        self.writer = LogWriter(self.log_dir)
        self.log_guard = LogGuard(self.writer)  # a log that cannot take records: baseline, unlogged, counted
        # Supervised: a learner that dies is logged and restarted with backoff while serving goes on.
        self._learner = None if learner == "off" else LearnerSupervisor.for_mode(learner, config, self.data_dir)
        # The canary's guardrails: fed as attribution windows close, revert a failing surface by themselves.
        self.monitor = RolloutMonitor(self.surfaces, self._revert_rollout,
                                      trackers=lambda: {n: e.tracker for n, e in self._surfaces.items()},
                                      on_advance=self._advance_rollout).start()
        self._refresh_lock = threading.Lock()
        # This process's shadow sums and guardrails, for the fleet view of every process on the data dir.
        self._evidence = EvidencePublisher(self.data_dir, self.own_evidence).start()
        self._watcher = ModelWatcher(self.refresh_models).start() if watch_models else None

    def _apply_approved_caps(self) -> None:
        """Serves the caps the data dir recorded, so a restarted worker serves what the running ones serve.

        The configuration changes them only when it changed since the last start (``CapStore.apply_config``): the
        first start records it, a lower configured cap is an audited change, a higher one is not applied (only the
        gate raises caps, invariant 2). A gate-approved raise above the configured cap survives restarts.
        """
        configured = {name: entry.config.exploration_cap for name, entry in self._surfaces.items()}
        for name, cap in self.caps.apply_config(configured).items():
            self._surfaces[name].policy.set_cap(cap)

    def _put_cap_in_force(self, surface: str, cap: float) -> None:
        """An accepted cap change, this process's or adopted from another one: in force from the next Rank."""
        entry = self._surfaces.get(surface)
        if entry is not None:  # the trail may name surfaces this configuration does not serve
            entry.policy.set_cap(cap)

    def refresh_admin_state(self) -> None:
        """Adopts the caps, rollout stages and shield rules other processes on this data dir changed (one ``stat``
        per store when none did). Called on the model watcher's tick and before every admin read."""
        with self._refresh_lock:  # the watcher's tick and admin reads: one "before" per adoption
            self.caps.refresh()  # put in force through _put_cap_in_force
            before = {name: self.rollout.state(name) for name in self._surfaces}
            if self.rollout.refresh():
                for name, old in before.items():
                    if self.rollout.state(name) != old:  # another process reverted, advanced or re-armed it
                        self._rollout_adopted(name, old)
            self.shields.refresh()  # put in force through _put_shield_in_force
            try:
                self.catalog.refresh()  # read once per Rank (CatalogStore.current): in force from the next one
            except CatalogStoreError as exc:  # a damaged version is refused once; the one in force keeps serving
                log.error("%s", exc)
            self.indexes.ensure(self.catalog.current, self._retrieval_configs)  # in the background

    def _rollout_adopted(self, surface: str, old: RolloutState) -> None:
        """Tells the guardrail of ``surface`` that another process moved it: a ramp within the same canary keeps the
        guardrail (its next auto-advance counts afresh); a revert, a re-arm or leaving the canary ends it."""
        new = self.rollout.state(surface)
        moves = [e for e in self.rollout.history(surface) if e.accepted and old.sequence < e.sequence <= new.sequence]
        same_canary = (old.stage is Stage.CANARY and old.sequence > 0
                       and all(e.new_stage is Stage.CANARY for e in moves))
        self.monitor.adopted(surface, same_canary=same_canary)

    def _recover_open_decisions(self) -> None:
        """After a restart, decisions whose attribution windows are still open keep accepting outcomes.

        Reads segments newest first (the table view skips candidate features) until one starts before the
        longest window; without this a host's ReportOutcome during a rolling restart would get NOT_FOUND. The
        outcome ids already logged for those decisions are restored too, so a host's retry after the restart is
        still a duplicate (an outcome is always logged after its decision, so it is in the segments read).
        """
        from logging_schema.rewards import micros
        from logging_schema.segments import list_segments, scan_segment
        from logging_schema.views import TableRecord

        log_dir = self.log_dir
        if not log_dir.is_dir():
            return
        now = time.time()
        horizon = max(entry.config.reward.attribution_window_seconds for entry in self._surfaces.values())
        recovered = 0
        keyed_outcomes: list[list[tuple[str, str, bool]]] = []  # per segment, newest segment first
        for path in reversed(list_segments(log_dir)):
            oldest = math.inf
            keyed: list[tuple[str, str, bool]] = []
            for payload in scan_segment(path):
                record = TableRecord.FromString(payload)
                if record.WhichOneof("event") == "outcome":
                    if record.outcome.outcome_id:
                        keyed.append((record.outcome.event_id, record.outcome.outcome_id, record.outcome.attributed))
                    continue
                if record.WhichOneof("event") != "decision":
                    continue
                event = record.decision
                served_at = event.served_at.seconds + event.served_at.nanos * 1e-9
                oldest = min(oldest, served_at)
                entry = self._surfaces.get(event.surface)
                if entry is not None and served_at + entry.config.reward.attribution_window_seconds >= now:
                    entry.tracker.track(event.event_id, micros(event.served_at.seconds, event.served_at.nanos),
                                        [slot.item_id for slot in event.slate],
                                        user_id=event.user_id if event.surface in self.user_queries else "")
                    recovered += 1
            keyed_outcomes.append(keyed)
            if oldest + horizon < now:
                break
        restored = 0
        for keyed in reversed(keyed_outcomes):  # log order: the first answer of a key wins
            for event_id, outcome_id, attributed in keyed:
                entry = next((e for e in self._surfaces.values() if e.tracker.knows(event_id)), None)
                if entry is not None:
                    entry.tracker.remember(event_id, outcome_id, attributed)
                    restored += 1
        if recovered:
            log.info("recovered %d decisions with open attribution windows (and %d outcome ids) from the log",
                     recovered, restored)

    def shadow_stats(self, surface: str) -> ShadowStats:
        """Agreement, added latency and fallback rate of the shadow decisions *this process* served on ``surface``
        since it started (the whole fleet's: ``fleet_rollout(surface).shadow()``)."""
        return self._entry(surface).shadow.snapshot()

    def own_evidence(self) -> ProcessEvidence:
        """This process's rollout evidence, as it publishes it to ``D/run/evidence/<pid>.json``."""
        surfaces = {}
        for name, entry in self._surfaces.items():
            guardrail = self.monitor.guardrail(name)
            surfaces[name] = SurfaceEvidence(self.rollout.state(name).sequence, entry.shadow.sums(),
                                             None if guardrail is None else guardrail.share())
        return ProcessEvidence(os.getpid(), time.time(), surfaces)

    def fleet_rollout(self, surface: str) -> FleetRollout:
        """``surface``'s shadow statistics and guardrails over every process serving the data dir (this one's from
        memory, the others' as published): what admin reads show and forward moves are judged on."""
        config = self._entry(surface).config.rollout
        own = self.own_evidence()
        return FleetRollout(surface, own.surfaces[surface].rollout_sequence, config,
                            tuple(read_members(self.data_dir, own)))

    def settle_fleet(self, surface: str, *, timeout_s: float = SETTLE_S) -> None:
        """Waits (at most ``timeout_s``) until every other process has published evidence made after this call
        about the rollout state in force here, so that a forward move counts everything served before it was asked
        for, whichever worker takes it (another worker's snapshot is otherwise up to one heartbeat old)."""
        since = time.time()
        deadline = time.monotonic() + timeout_s
        while not self.fleet_rollout(surface).settled(since) and time.monotonic() < deadline:
            time.sleep(0.02)

    def cap(self, surface: str) -> float:
        """The exploration cap in force for ``surface``."""
        return self._entry(surface).policy.cap

    def _load_long_term(self, config: ServiceConfig) -> LongTermValue | None:
        """The slate-RL model, for surfaces that blend it in (λ > 0); None when no surface does."""
        if not any(surface.model.long_term_weight != 0 for surface in config.surfaces.values()):
            return None
        from recsys_rl.slateq.serving import ReloadableSlateQ, SlateQLoadError  # torch only when used

        long_term = ReloadableSlateQ(self.data_dir / "models")
        try:
            long_term.load()
        except SlateQLoadError as exc:
            log.warning("%s; long-term values are 0 until a slate-RL model is published", exc)
        return long_term

    def load_long_term(self, version: str | None = None) -> str:
        """Hot-loads a slate-RL version (default: latest). A refused checkpoint leaves the old one serving."""
        if self._long_term is None:
            raise InvalidInput("surface", "no configured surface blends a long-term value (model.long_term_weight)")
        return self._long_term.load(version)  # type: ignore[attr-defined]

    def _load_surface(self, surface: SurfaceConfig) -> _Surface:
        """Serves the newest version that loads; refused ones (corrupt, VW refuses) are logged and skipped."""
        refused = self._refused_models[surface.name]
        found = self.registry.load_newest(surface.name, lambda cp: VWBandit(surface.model.vw_args, model=cp.model,
                                                                            cache_items=surface.model.item_cache),
                                          refused=refused)
        if found is not None:
            checkpoint, serving = found
            if checkpoint.version != self.registry.latest_version(surface.name):
                # LATEST should name a version that loads (the learner starts from the newest that loads anyway).
                try:
                    self.registry.point_latest(surface.name, checkpoint.version)
                    log.error("surface %s: serving %s; LATEST now names it instead of %s", surface.name,
                              checkpoint.version, ", ".join(sorted(refused)) or "nothing")
                except OSError as exc:
                    log.error("surface %s: serving %s; could not repoint LATEST: %s", surface.name,
                              checkpoint.version, exc)
        else:
            if refused:
                log.error("surface %s: no published version loads (refused %s); starting from a fresh model",
                          surface.name, ", ".join(sorted(refused)))
            # A fresh surface starts from an untrained model, published so the version names a real file.
            serving = VWBandit(surface.model.vw_args, cache_items=surface.model.item_cache)
            checkpoint = self.registry.publish(
                surface.name, serving.to_bytes(), parent=None, data_range={},
                parameters={"vw_args": surface.model.vw_args, "updates": 0},
            )
        long_term = self._long_term if surface.model.long_term_weight > 0 and self._long_term else NoLongTermValue()
        policy = SurfacePolicy(surface, serving, checkpoint.version, server_seed=self.config.seed,
                               long_term=long_term, **self._learned_baseline(surface))
        return _Surface(surface, policy, OutcomeTracker(surface), ShadowTracker())

    def _learned_baseline(self, surface: SurfaceConfig) -> dict[str, object]:
        """SurfacePolicy's baseline arguments for ``model.baseline`` (none: the host's baseline_score).

        A configured version that does not load stops the start (ConfigError naming it): silently serving the host's
        score instead would change what every fallback, control user and shadow-stage user sees. Publishing a newer
        version changes nothing here; the configuration names the version that serves."""
        version = surface.model.baseline
        if not version:
            return {}
        from recsys_rl.baseline import baseline_surface  # lightgbm only for surfaces with a learned baseline
        from recsys_rl.baseline.model import LambdaRankBaseline

        name = baseline_surface(surface.name)
        try:
            scorer = LambdaRankBaseline(self.registry.load(name, version).model, version=version)
        except Exception as exc:  # noqa: BLE001 - NotFound, checksum, JSON or LightGBM errors: all refuse the start
            raise ConfigError(f"surfaces.{surface.name}.model.baseline: {version} does not load "
                              f"({type(exc).__name__}: {exc})") from exc
        log.info("surface %s: the baseline is LambdaRank %s", surface.name, version)
        return {"baseline": scorer, "baseline_version": version}

    def baseline_version(self, surface: str) -> str:
        """The learned baseline ordering ``surface``'s baseline slates ("" = the host's baseline_score)."""
        return self._entry(surface).policy.state.baseline_version

    def refresh_models(self) -> list[str]:
        """Loads every surface's newest published version if it is not the one serving; returns the swaps.

        On the same tick the admin state other processes changed is adopted (``refresh_admin_state``)."""
        self.refresh_admin_state()
        swapped = []
        for name, entry in self._surfaces.items():
            pointer = self.registry.latest_version(name)
            refused = self._refused_models[name]
            if pointer is None or pointer == entry.policy.policy_version or pointer in refused:
                continue
            try:
                self.load_version(name, self.registry.load(name, pointer))
            except (LookupError, ValueError, RuntimeError, OSError) as exc:  # VW: RuntimeError("Bad model format")
                refused.add(pointer)
                log.error("surface %s: refusing model version %s (%s); %s keeps serving", name, pointer, exc,
                          entry.policy.policy_version)
                continue
            swapped.append(f"{name}={pointer}")
        if self._long_term is not None:
            pointer = self.registry.latest_version("slateq")
            if pointer and pointer != self._long_term.version and pointer not in self._refused_long_term:
                try:
                    self._long_term.load(pointer)
                    swapped.append(f"slateq={pointer}")
                except ValueError as exc:  # SlateQLoadError: refused, the old version keeps serving
                    self._refused_long_term.add(pointer)
                    log.error("%s", exc)
        return swapped

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

    def rank(self, request: pb.RankRequest, *, deadline: float | None = None,
             queued_since: float | None = None, wire: bytes | None = None) -> tuple[Decision, str]:
        """Decides, logs (enqueues) and tracks one request. Returns the decision and its event id.

        The surface is resolved once here and the request checked by its rules (``requests``); ``deadline`` (a
        ``time.perf_counter()`` instant, e.g. the RPC's) and the surface's decision budget make the one deadline
        the decision path sees. The surface's rollout (``rollout_state``) is read once per request and decides who
        serves (``SurfacePolicy.rank``); at stage shadow the shadow's agreement and added time feed ``shadow_stats``.

        ``queued_since``: the ``perf_counter()`` instant the request arrived in this process (``ranker.admission``);
        the decision budget runs from then, and a request already past it (or past ``deadline``) gets the baseline
        at once, without scoring (reason "queued: waited X ms", counted in ``overload_baseline``).

        ``wire``: the bytes ``request`` was parsed from, when the caller has them (the gRPC server): the candidates
        are sliced out of them instead of out of a new serialization of the request.
        """
        if self._closed.is_set():
            raise NotReady("the service is shutting down")
        started_ns = time.perf_counter_ns()
        entry = self._entry(request.surface)
        catalog = self.catalog.current if entry.config.catalog else None  # one read: one version per request
        retrieval = None
        if request.HasField("retrieval"):
            request, retrieval = self._retrieve(entry, request, catalog)
            catalog = retrieval.index.catalog  # features come from the version the index was built from
            wire = None  # the retrieved request is not the one sent
        candidates = validate_rank_request(request, max_candidates=entry.config.max_candidates, catalog=catalog,
                                           wire=wire)
        candidates.retrieval = retrieval
        # `request` stays as sent: its candidates are read through the view (ids, keys, baselines, the log's bytes);
        # a consumer that needs them as messages reads candidates.request, completed from the catalog on first use.
        now = started_ns / 1e9
        arrived = now if queued_since is None else min(queued_since, now)
        budget_deadline = arrived + entry.config.decision_budget_ms / 1000.0
        deadline = budget_deadline if deadline is None else min(deadline, budget_deadline)
        late = f"queued: waited {(now - arrived) * 1e3:.1f} ms" if now >= deadline else ""
        surface = request.surface  # a protobuf string read makes a new str each time: read once
        rollout = self.rollout_state(surface)
        if not self.log_guard.ready():  # never a learned or explored slate without its event queued
            return self.log_guard.unlogged(entry.policy.rank(request, deadline=deadline, candidates=candidates,
                                                             serve_baseline=LOG_UNAVAILABLE, rollout=rollout,
                                                             late=late))
        decision = entry.policy.rank(request, deadline=deadline, candidates=candidates, rollout=rollout, late=late)
        decision.retrieval = retrieval
        # 128 random bits as 32 hex digits, the format a uuid4's hex had (ranker.workers.layout), from os.urandom in
        # batches (event_ids: one GIL-releasing system call per 256 Ranks, not per Rank).
        event_id = self._event_id_prefix + random_hex()
        served_at_ns = time.time_ns()
        window_s = entry.config.reward.attribution_window_seconds
        latency_us = (time.perf_counter_ns() - started_ns) // 1000

        def build() -> Message:  # a LogRecord's WireRecord view: the candidates as the view read them, as bytes
            return decision_record(request, decision, candidates, event_id=event_id, served_at_ns=served_at_ns,
                                   window_s=window_s, latency_us=latency_us)

        try:
            # The event is built on the writer's thread; from here on it is in the queue (invariant 3).
            self.writer.submit(DeferredRecord(build))
        except LogQueueFull as exc:
            raise Overloaded(f"decision log queue is full: {exc}") from exc
        except LogUnavailable:  # the disk failed since ready(): this decision is not served, the baseline is
            return self.log_guard.unlogged(entry.policy.rank(request, deadline=deadline, candidates=candidates,
                                                             serve_baseline=LOG_UNAVAILABLE, rollout=rollout))
        if late and decision.fallback_reason == late:
            with self._overload_lock:
                self.overload_baseline += 1
        if decision.shadow is not None:
            entry.shadow.record(decision, decision.shadow, decision.shadow_latency_us)
        tag = self.monitor.decided(surface, rollout.stage, decision.serving_mode, latency_ms=latency_us / 1000)
        entry.tracker.track(event_id, served_at_ns // 1000, [slot.item_id for slot in decision.slots],
                            request=candidates.request if self._long_term is not None else None, reward_tag=tag,
                            user_id=request.user_id if surface in self.user_queries else "")
        return decision, event_id

    def _retrieve(self, entry: _Surface, request: pb.RankRequest,
                  catalog: CatalogVersion | None) -> tuple[pb.RankRequest, RetrievalResult]:
        """The request with its retrieved candidates (recsys_rl.retrieval.request); a new catalog version in force
        starts its index's build (the previous index serves until it is swapped in)."""
        config = entry.config.retrieval
        if config is None or not entry.config.catalog:
            raise PreconditionFailed(f"retrieval: surface {entry.config.name!r} has no [surfaces."
                                     f"{entry.config.name}.retrieval] with catalog = true; send candidates instead")
        index = self.indexes.get(config)
        if catalog is not None and (index is None or index.version != catalog.version):
            self.indexes.ensure(catalog, self._retrieval_configs)
        if index is None:
            raise PreconditionFailed("retrieval: the catalog is empty or its index is still being built")
        state = entry.policy.state
        shielded = state.shield.active  # outside exploration: unshielded surfaces only (retrieval/outside.py)
        key = draw_key(entry.policy.server_seed, entry.config.name, request.request_id)
        return retrieve(request, index, config, max_candidates=entry.config.max_candidates, cap=state.cap,
                        draw_key=key, explore_outside=not shielded, users=self.user_queries.get(entry.config.name))

    def refuse_overloaded(self, reason: str) -> Overloaded:
        """Counts a Rank refused because even the baseline cannot be served in time; returns the error to raise
        (RESOURCE_EXHAUSTED: nothing was decided or logged, the host serves its own order or retries)."""
        with self._overload_lock:
            self.overload_refused += 1
        return Overloaded(reason)

    def report_outcome(self, request: pb.ReportOutcomeRequest) -> OutcomeAck:
        """Attributes and logs one outcome: whether it counts, and whether it repeats an acknowledged outcome_id.

        A duplicate (same event_id and outcome_id as an acknowledged outcome) gets the first answer and is neither
        logged nor counted again. The id is remembered only once the outcome is queued for the log, so a retry
        after a failed submit is logged (and counted) exactly once.
        """
        validate_outcome_request(request)
        received_ns = time.time_ns()
        # Integer nanoseconds end to end: the tracker and the log see the same microsecond (one attribution rule).
        occurred_ns = request.occurred_at.ToNanoseconds() if request.HasField("occurred_at") else received_ns
        entry = next((e for e in self._surfaces.values() if e.tracker.knows(request.event_id)), None)
        if entry is None:
            raise NotFound(f"event_id: no decision {request.event_id!r} is known to this server")
        if not self.log_guard.ready():  # acknowledge (and count) nothing the log cannot take: the host retries
            raise self.log_guard.refuse_outcome()
        ack = entry.tracker.attribute(request.event_id, request.item_id, request.outcome, request.value,
                                      occurred_ns // 1000, request.outcome_id)
        if ack.duplicate:
            self.metrics.outcome_attributed(entry.config.name, ack)
            return ack
        outcome = events_pb2.OutcomeEvent(
            event_id=request.event_id,
            item_id=request.item_id,
            outcome=request.outcome,
            value=request.value,
            surface=entry.config.name,
            attributed=ack.attributed,
            outcome_id=request.outcome_id,
        )
        outcome.occurred_at.FromNanoseconds(occurred_ns)
        outcome.received_at.FromNanoseconds(received_ns)
        try:
            self.writer.submit(events_pb2.LogRecord(outcome=outcome))
        except LogQueueFull as exc:
            raise Overloaded(f"outcome log queue is full: {exc}") from exc
        except LogUnavailable as exc:
            raise self.log_guard.refuse_outcome() from exc
        # Only once the outcome is queued: a retry after a refusal above is then counted exactly once.
        entry.tracker.remember(request.event_id, request.outcome_id, ack.attributed)
        self.metrics.outcome_attributed(entry.config.name, ack)
        if ack.attributed:  # a canary-stage decision's reward for the guardrail (no-op for unwatched ones)
            entry.tracker.count_reward(request.event_id, request.item_id, request.outcome, request.value,
                                       occurred_ns // 1000, request.outcome_id)
        if ack.attributed and request.item_id and request.value > 0:
            self._observe_user_query(entry, request)
        if ack.attributed and request.item_id and self._long_term is not None and request.value > 0:
            served = entry.tracker.request_of(request.event_id)
            if served is not None:  # the slate-RL user state follows what the user engaged with
                clicked = [c for c in served.candidates if c.item_id == request.item_id]  # type: ignore[attr-defined]
                self._long_term.observe(served.user_id, clicked)  # type: ignore[attr-defined]
        return ack

    def _observe_user_query(self, entry: _Surface, request: pb.ReportOutcomeRequest) -> None:
        """An engagement moves the user's kept query toward the item's embedding in the catalog version in force
        (an item no longer in the catalog, or a surface without kept queries, changes nothing)."""
        users = self.user_queries.get(entry.config.name)
        catalog = self.catalog.current
        if users is None or catalog is None:
            return
        user_id = entry.tracker.user_of(request.event_id)
        item = catalog.items.get(request.item_id) if user_id else None
        if item is not None:
            users.observe(user_id, np.asarray(catalog_pb.CatalogItem.FromString(item).embedding, dtype=np.float64))

    def load_version(self, surface: str, checkpoint: Checkpoint) -> None:
        """Hot-swaps the serving model; a checkpoint that fails to load raises and the old one keeps serving."""
        entry = self._entry(surface)
        bandit = VWBandit(entry.config.model.vw_args, model=checkpoint.model, cache_items=entry.config.model.item_cache)
        bandit.cache.warm(entry.policy.hot_items())  # parse off the request path, then swap
        entry.policy.swap_model(bandit, checkpoint.version)

    def set_cap(self, surface: str, cap: float) -> None:
        self._entry(surface).policy.set_cap(cap)

    def shield(self, surface: str) -> ShieldRules:
        """The shield rules in force for ``surface``."""
        return self._entry(surface).policy.state.shield

    def set_shield(self, surface: str, edit: ShieldEdit, *, actor: str, reason: str = "",
                   expected_version: str = "") -> ShieldAuditEntry:
        """Validates ``edit``, records the new version (version files, then the audit line) and puts it in force
        from the next Rank. Aborted when ``expected_version`` is set and not in force."""
        self._entry(surface)
        edit.validate()
        change, _ = self.shields.set(surface, edit.apply, actor=actor, reason=reason,
                                     expected_version=expected_version)
        return change

    def _put_shield_in_force(self, surface: str, rules: ShieldRules) -> None:
        entry = self._surfaces.get(surface)
        if entry is not None:  # the trail may name surfaces this configuration does not serve
            entry.policy.set_shield(rules)

    def rollout_state(self, surface: str) -> RolloutState:
        """The rollout stage and canary share in force for ``surface`` (lock-free: read on every Rank)."""
        return self.rollout.state(surface)

    def guardrail_state(self, surface: str) -> GuardrailSnapshot | None:
        """This process's canary guardrail's current estimates (None when the surface has none running here; the
        whole fleet's: ``fleet_rollout(surface).guardrail()``)."""
        self._entry(surface)
        guardrail = self.monitor.guardrail(surface)
        return guardrail.state() if guardrail is not None else None

    def guardrail_evidence(self, surface: str, for_move: Stage) -> GuardrailEvidence | None:
        """The forward-move evidence of this process's canary guardrail (None without one)."""
        guardrail = self.monitor.guardrail(surface)
        return guardrail.evidence(for_move) if guardrail is not None else None

    def rollout_evidence(self, surface: str, stage: Stage, canary_share: float) -> GuardrailEvidence | None:
        """What a forward move of ``surface`` to (stage, canary_share) is judged on (None: no evidence exists).

        baseline → shadow changes nothing users see; shadow → canary needs ``min_decisions`` shadow decisions and a
        shadow fallback rate within ``max_fallback_rate``; a larger share or live needs the canary guardrail's
        checks. Anything else (e.g. baseline → canary) has no evidence and is refused: go through the stages.
        With several processes on the data dir, the evidence is the fleet's (``recsys_rl.rollout.fleet``): shadow
        sums over every process, and every process's guardrail passing its own checks.
        """
        self._entry(surface)
        current = self.rollout_state(surface).stage
        if stage is Stage.SHADOW and current is Stage.BASELINE:
            return GuardrailEvidence([("users_keep_the_baseline", True, "shadow serves the baseline order")])
        if stage is Stage.CANARY and current is Stage.SHADOW:
            return self.fleet_rollout(surface).shadow_evidence()
        if current is Stage.CANARY:
            return self.fleet_rollout(surface).guardrail_evidence()
        return None

    def _advance_rollout(self, surface: str, guardrail: Guardrail) -> bool:
        """auto_advance: one ramp step, audited by the rollout store when the guardrail's evidence passes.

        Only from the state this process serves: when another process moved the surface first (e.g. its own
        guardrail advanced it a moment ago), the store declines and this guardrail counts afresh once adopted."""
        serving = self.rollout.state(surface)

        def evidence() -> GuardrailEvidence:  # every worker's guardrail, this one's included (fleet_rollout)
            found = self.fleet_rollout(surface).guardrail_evidence()
            return guardrail.evidence(Stage.LIVE) if found is None else found

        entry = self.rollout.advance(surface, evidence=evidence, expected_sequence=serving.sequence)
        if entry is not None:
            state = self.rollout.state(surface)
            log.info("surface %s: the guardrail held; rollout advanced to %s (canary share %g)", surface,
                     state.stage.value, state.canary_share)
        return entry is not None

    def _revert_rollout(self, surface: str, snapshot: GuardrailSnapshot) -> None:
        """The guardrail's automatic move to stage baseline, audited with its estimates (the rollout store's)."""
        self.rollout.revert(surface, reason=snapshot.reason, evidence_json=evidence_json(snapshot))

    def tracker(self, surface: str) -> OutcomeTracker:
        return self._entry(surface).tracker

    def close(self) -> None:
        """Drains and fsyncs the log, then lets the learner learn what is due and publish. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._evidence.stop()  # removes D/run/evidence/<pid>.json: a stopped process is not part of the fleet
        self.log_guard.close()  # writes a pending gap record, gives up on a failing disk in bounded time
        if self._watcher is not None:
            self._watcher.stop()
        self.monitor.stop()
        if self._learner is not None:
            self._learner.stop(LEARNER_STOP_S)
