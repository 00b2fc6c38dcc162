"""One worker of ``recsys-rl serve --workers N``: a RankingServer on the shared port, its own log stream.

Started by the parent (``supervisor``) as ``recsys-rl serve <the parent's arguments> --worker-index K``. Differs from
a single-process server in what the parent owns instead: no data dir lock, no learner (the parent's follows every
stream), no metrics exporter or port file (the parent's), and health follows ``D/run/workers.json`` (SERVING only
while every worker serves). It exits on SIGTERM like a single server (drain, flush the log) and by itself when
its parent is gone, so a killed parent leaves no orphans serving.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import NoReturn

from ranker.admin_auth import AdminSettings
from ranker.server import SHUTDOWN_DEADLINE_S, SHUTDOWN_GRACE_S, RankingServer, exit_by
from ranker.workers.forwarding import WorkerServicer, start_outcome_listener
from ranker.workers.layout import (STATUS_FILE, event_id_prefix, health_ack, outcome_socket, read_status, run_dir,
                                   worker_log_dir)
from recsys_rl.config import ServiceConfig
from recsys_rl.metrics.hooks import NO_METRICS
from recsys_rl.serving.service import DecisionService

log = logging.getLogger(__name__)

# How often a worker looks at workers.json (a stat) and at whether its parent is alive.
_FOLLOW_S = 0.1
_PARENT_CHECK_S = 0.5


class HealthFollower:
    """Sets the worker's health from ``D/run/workers.json``: SERVING only while all ``workers`` serve; then
    acknowledges the status generation applied in ``D/run/worker-K.health``."""

    def __init__(self, data_dir: Path, index: int, workers: int, set_serving) -> None:  # noqa: ANN001 - (bool) -> None
        self._path = run_dir(data_dir) / STATUS_FILE
        self._ack = health_ack(data_dir, index)
        self._data_dir = Path(data_dir)
        self._workers = workers
        self._set_serving = set_serving
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-health", daemon=True)

    def start(self) -> HealthFollower:
        self._thread.start()
        return self

    def _loop(self) -> None:
        seen: tuple[int, int] | None = None
        serving: bool | None = None
        while True:
            try:
                stat = os.stat(self._path)
                key: tuple[int, int] | None = (stat.st_ino, stat.st_mtime_ns)  # replaced by rename on every change
            except OSError:
                key = None
            if key != seen or serving is None:
                seen = key
                status = read_status(self._data_dir) if key is not None else None
                now = status is not None and not status.get("stopping") and \
                    sorted(status.get("serving", [])) == list(range(self._workers))  # type: ignore[arg-type]
                if now != serving:
                    serving = now
                    self._set_serving(now)
                if status is not None:
                    self._acknowledge(int(status.get("generation", -1)))  # type: ignore[arg-type]
            if self._stop.wait(_FOLLOW_S):
                return

    def _acknowledge(self, generation: int) -> None:
        tmp = self._ack.with_suffix(".tmp")
        try:
            tmp.write_text(str(generation))
            tmp.replace(self._ack)
        except OSError as exc:  # the parent then waits for its start-up line longer; serving is unaffected
            log.warning("cannot write %s: %s", self._ack, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)


def serve_worker(config: ServiceConfig, data_dir: Path, *, index: int, workers: int, parent_pid: int, host: str,
                 port: int, metrics_port: int | None, max_workers: int,
                 max_queue_wait_ms: float | None, admin: AdminSettings | None = None) -> NoReturn:
    """Serves until SIGTERM/SIGINT or its parent's death, then drains like ``serve_forever`` and exits (0, or 1
    past the shutdown budget)."""
    metrics = None
    if metrics_port is not None:
        # The parent pointed PROMETHEUS_MULTIPROC_DIR at D/run/metrics (inherited) and serves the sums.
        from recsys_rl.metrics.definitions import ServingMetrics

        metrics = ServingMetrics(list(config.surfaces))
    service = DecisionService(config, data_dir, learner="off", metrics=metrics if metrics is not None else NO_METRICS,
                              log_dir=worker_log_dir(data_dir, index), event_id_prefix=event_id_prefix(index))
    server = RankingServer(
        service, host=host, port=port, reuse_port=True, max_workers=max_workers, max_queue_wait_ms=max_queue_wait_ms,
        admin=admin, wrap_servicer=lambda local: WorkerServicer(local, index=index, workers=workers, data_dir=data_dir),
    ).start(serving=False)
    wrapper: WorkerServicer = server.servicer  # type: ignore[assignment]
    listener = start_outcome_listener(wrapper.local, data_dir, index)
    if metrics is not None:
        from recsys_rl.metrics.sampler import StateSampler

        StateSampler(service, metrics).start()
    health = HealthFollower(data_dir, index, workers, server.set_serving).start()
    log.info("worker %d of %d serving on %s (log stream %s)", index, workers, server.address, service.log_dir)
    print(f"serving on {server.address}", flush=True)  # the parent waits for this line
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(_PARENT_CHECK_S):
        if os.getppid() != parent_pid:  # reparented: the parent died without stopping us
            log.error("worker %d: parent (pid %d) is gone; shutting down", index, parent_pid)
            break
    exit_by(time.monotonic() + SHUTDOWN_DEADLINE_S)
    health.stop()
    server.set_serving(False)  # balancers drain us first
    # Forwarded outcomes in flight finish before the service closes; then the public port drains as a single
    # server does (health NOT_SERVING, in-flight calls finish, the log drains and fsyncs).
    listener.stop(SHUTDOWN_GRACE_S).wait(SHUTDOWN_GRACE_S)
    server.stop(grace_s=SHUTDOWN_GRACE_S)
    wrapper.close()
    socket_path = outcome_socket(data_dir, index)[1]
    if socket_path is not None:
        socket_path.unlink(missing_ok=True)
    log.info("worker %d: shutdown complete", index)
    logging.shutdown()
    os._exit(0)
