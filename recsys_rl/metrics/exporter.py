"""The ``/metrics`` HTTP endpoint and the multiprocess directory it reads.

Multiprocess mode (the default under ``recsys-rl serve --metrics-port``): every serving process writes its
metrics to mmap'd files in ``PROMETHEUS_MULTIPROC_DIR`` = ``<data dir>/run/metrics`` and the exporter sums the
files on each scrape, so N workers read as one server. The variable must be set before ``prometheus_client`` is
first imported (the client chooses its value storage then), and the directory emptied at start (files of a
previous run would be added in).

Fallback (single-process mode): when ``prometheus_client`` was imported before :func:`configure_multiprocess`
ran without the variable (an embedding application, tests) or the directory cannot be made, the exporter serves
its process's own registry. That is exact for one process and wrong for several: ``--workers N > 1`` must refuse
to start with metrics in that mode.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / "metrics"


def configure_multiprocess(data_dir: Path) -> Path | None:
    """Empties ``<data dir>/run/metrics`` and points ``PROMETHEUS_MULTIPROC_DIR`` at it; None: the fallback.

    Call it in the parent before any worker forks and before anything imports ``prometheus_client``. The caller
    holds the data dir's lock, so no other server is writing into the directory being emptied.
    """
    directory = metrics_dir(data_dir)
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(directory):
        log.warning("metrics: prometheus_client was imported before %s could be set; serving this process's "
                    "registry only (single-process mode)", ENV)
        return None
    try:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    except OSError as exc:
        log.warning("metrics: cannot use %s (%s); single-process mode", directory, exc)
        return None
    os.environ[ENV] = str(directory)
    return directory


def mark_worker_dead(pid: int) -> None:
    """For the worker supervisor: a dead worker's live gauges leave the sums (its counters stay)."""
    from prometheus_client import multiprocess

    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid)


@dataclass
class Exporter:
    server: ThreadingHTTPServer
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=2.0)


def start_exporter(host: str, port: int, *, registry=None, refresh: Callable[[], None] | None = None) -> Exporter:  # noqa: ANN001
    """Serves the Prometheus text format on ``host:port`` (0: a free port; ``Exporter.port`` is the bound one).

    ``registry``: what to serve in single-process mode (default: the client's global registry); in multiprocess
    mode a fresh registry reads every process's files. ``refresh``: called before each scrape, so this
    process's sampled state is current (other workers' is at most one sample period old).
    """
    from prometheus_client import CollectorRegistry, multiprocess
    from prometheus_client.exposition import MetricsHandler
    from prometheus_client.registry import REGISTRY

    if os.environ.get(ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    elif registry is None:
        registry = REGISTRY
    base = MetricsHandler.factory(registry)

    class Handler(base):  # type: ignore[misc, valid-type]
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if refresh is not None:
                try:
                    refresh()
                except Exception:  # noqa: BLE001 - a stale sample is better than no scrape
                    log.exception("metrics: refresh before scrape failed")
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not worth a line
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True)
    thread.start()
    return Exporter(server, thread, server.server_address[1])
