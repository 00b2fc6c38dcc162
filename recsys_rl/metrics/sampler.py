"""Process state → metrics, once a second off the request path (and right before a local scrape).

What a worker knows only as totals or snapshots (the log writer's bytes and errors, the guard's unlogged count,
the model serving, the cap, the guardrail) is copied here rather than hooked into code that must not know about
metrics (``logging_schema`` imports nothing of ours). Totals become counter increments of their change since the
last sample, so they sum correctly over workers, and over a worker that exited, in multiprocess mode.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_rl.metrics.definitions import GUARDRAIL_STATUSES, ServingMetrics

if TYPE_CHECKING:
    from recsys_rl.serving.service import DecisionService

log = logging.getLogger(__name__)

SAMPLE_PERIOD_S = 1.0


class StateSampler:
    """Copies ``service``'s state into ``metrics``; ``sample()`` is thread-safe (the timer and a scrape)."""

    def __init__(self, service: DecisionService, metrics: ServingMetrics, *, period_s: float = SAMPLE_PERIOD_S,
                 clock=time.time) -> None:  # noqa: ANN001 - a () -> float
        self.service = service
        self.metrics = metrics
        self.period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._totals = {"bytes": 0, "write_errors": 0, "unlogged": 0, "refused": 0}
        self._versions: dict[str, str] = {}  # the version each surface's model_info says 1 for
        self._manifests: dict[tuple[str, str], dict] = {}  # (surface, version) → manifest: read once each

    def start(self) -> StateSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="metrics-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - metrics must never take serving down; say what failed, go on
                log.exception("metrics: sampling the service state failed")

    def sample(self) -> None:
        with self._lock:
            self._sample_log()
            now = self._clock()
            for surface in self.service.surfaces:
                self._sample_surface(surface, now)

    def _sample_log(self) -> None:
        m = self.metrics
        stats = self.service.writer.stats()
        m.log_queue_depth.set(max(0, stats.submitted - stats.written - stats.build_errors - stats.unwritten))
        guard = self.service.log_guard.stats()
        for key, total, counter in (("bytes", stats.bytes, m.log_bytes),
                                    ("write_errors", stats.write_errors, m.log_write_errors),
                                    ("unlogged", guard.decisions_unlogged, m.decisions_unlogged),
                                    ("refused", guard.outcomes_refused, m.outcomes_refused)):
            if total > self._totals[key]:
                counter.inc(total - self._totals[key])
                self._totals[key] = total

    def _sample_surface(self, surface: str, now: float) -> None:
        m = self.metrics
        m.exploration_cap.labels(surface).set(self.service.cap(surface))
        version = self.service.policy_version(surface)
        old = self._versions.get(surface)
        if old != version:
            if old is not None:  # multiprocess files cannot drop a series: the old version reads 0
                m.model_info.labels(surface, old).set(0)
            m.model_info.labels(surface, version).set(1)
            self._versions[surface] = version
        serving = self._manifest(surface, version)
        if isinstance(serving.get("created_at"), (int, float)):
            m.model_age.labels(surface).set(max(0.0, now - serving["created_at"]))
        self._sample_lag(surface)
        snapshot = self.service.guardrail_state(surface)
        status = "none" if snapshot is None else snapshot.status
        for name in GUARDRAIL_STATUSES:
            m.guardrail_status.labels(surface, name).set(1 if name == status else 0)
        self._sample_retrieval(surface)

    def _sample_retrieval(self, surface: str) -> None:
        """The recall the surface's retrieval index measured and the parameter it searches with (no index yet, or
        no retrieval: nothing set)."""
        config = self.service.surfaces[surface].retrieval
        index = None if config is None else self.service.indexes.get(config)
        if index is None or index.kind == "exact":
            if index is not None and config.recall_target > 0.0:
                self.metrics.retrieval_recall.labels(surface).set(1.0)
            return
        parameter = "nprobe" if index.kind == "ivf" else "ef_search"
        used = index.search_params(config, config.size)[parameter]
        self.metrics.retrieval_search_parameter.labels(surface, parameter).set(used)
        tuned = index.tuning_for(config)
        if tuned is not None:
            self.metrics.retrieval_recall.labels(surface).set(tuned.recall)

    def _sample_lag(self, surface: str) -> None:
        """Newest logged decision vs newest learned: what the learner last published (LATEST's manifest), which
        may be newer than what this worker serves. A model with nothing learned yet counts from its creation."""
        newest_logged = self.metrics.newest_logged.get(surface)
        latest = self.service.registry.latest_version(surface)
        if newest_logged is None or latest is None:
            return
        manifest = self._manifest(surface, latest)
        data_range = manifest.get("data_range")
        learned = data_range.get("last_served_at") if isinstance(data_range, dict) else None
        if not isinstance(learned, (int, float)):
            learned = manifest.get("created_at")
        if isinstance(learned, (int, float)):
            self.metrics.learner_lag.labels(surface).set(max(0.0, newest_logged - learned))

    def _manifest(self, surface: str, version: str) -> dict:
        key = (surface, version)
        manifest = self._manifests.get(key)
        if manifest is None:
            path = Path(self.service.registry.models_dir) / surface / version / "manifest.json"
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError):
                return {}  # not cached: a version being published is read again next time
            self._manifests[key] = manifest
        return manifest
