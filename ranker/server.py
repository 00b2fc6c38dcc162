"""Process model: one gRPC server per process, health and reflection, graceful shutdown.

Vowpal Wabbit holds the GIL and a Workspace is not thread-safe, so parallelism across cores comes from
processes (``recsys-rl serve --workers N``: one server per core on the same port with SO_REUSEPORT, each with its
own log stream; see ``ranker.workers``), not from threads. Inside a process a small thread pool overlaps network
I/O with decisions.

Shutdown (SIGTERM/SIGINT): health goes NOT_SERVING so balancers drain us, the server stops accepting RPCs and
lets in-flight ones finish (grace period), then learners publish and the log writer drains and fsyncs.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ranker.admin import add_admin_servicer
from ranker.catalog import CATALOG_SERVICE, add_catalog_servicer
from ranker.admin_auth import ADMIN_SERVICE, AdminAuthInterceptor, AdminSettings, AuthzFile
from ranker.admission import StampingExecutor
from ranker.servicer import RankingServicer, add_ranking_service
from recsys_rl.config import ServiceConfig
from recsys_rl.metrics.hooks import NO_METRICS
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.serving.service import DecisionService

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 1.5
# SIGTERM → exit, whatever happens (the watchdog below): the operator's contract is 10 s.
SHUTDOWN_DEADLINE_S = 9.5
# Handler threads. VW and the per-candidate Python work hold the GIL, so more threads only interleave decisions
# (each takes longer, a wait the queue stamp cannot see); one thread serialises the hand-offs through gRPC's polling
# thread. Two measured best (docs/benchmarks.md, "Rank under overload").
DEFAULT_MAX_WORKERS = 2
# A Rank that waited longer than this in the queue is refused (RESOURCE_EXHAUSTED), not served late: 2x the default
# decision budget, the tail a host can plan for. A surface's budget (shorter) turns waits past it into the baseline.
DEFAULT_MAX_QUEUE_WAIT_MS = 50.0
# Logged at start by a server (or a workers' parent) without --admin-port.
ADMIN_NOT_SERVED = ("admin (PolicyAdminService) not served: start with --admin-port and its TLS and authorization "
                    "flags to change caps, rollout stages or shield rules (docs/operations.md, Admin access)")
RANKING_SERVICE = pb.DESCRIPTOR.services_by_name["RankingService"].full_name


class AdminListener:
    """PolicyAdminService and CatalogService (+ health, reflection) on its own TLS port, every admin call through AdminAuthInterceptor.

    Its own small thread pool: an admin call (a gate verification re-hashes log segments) never queues behind Rank
    in the Rank pool, nor Rank behind it. Binds with SO_REUSEPORT like the Rank port when workers share a port: the
    caps, rollout and shield state is on disk, so any worker can take the call."""

    def __init__(self, service: DecisionService, settings: AdminSettings, *, host: str, reuse_port: bool) -> None:
        interceptor = AdminAuthInterceptor(AuthzFile(settings.authz))
        self._server = grpc.server(ThreadPoolExecutor(2, thread_name_prefix="admin"), interceptors=[interceptor],
                                   maximum_concurrent_rpcs=64, options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
        add_admin_servicer(self._server, service, service.data_dir)
        add_catalog_servicer(self._server, service.catalog)  # catalog writes change what is served: admin's
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((ADMIN_SERVICE, CATALOG_SERVICE, health.SERVICE_NAME,
                                             reflection.SERVICE_NAME), self._server)
        bind_host = settings.host or host
        self.port = self._server.add_secure_port(f"{bind_host}:{settings.port}", settings.server_credentials())
        if self.port == 0:
            raise OSError(f"could not bind the admin listener to {bind_host}:{settings.port}")
        self.address = f"{bind_host}:{self.port}"

    def start(self) -> None:
        self._server.start()
        for name in ("", ADMIN_SERVICE, CATALOG_SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float) -> threading.Event:
        for name in ("", ADMIN_SERVICE, CATALOG_SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        return self._server.stop(grace_s)


class RankingServer:
    """A started gRPC server around a DecisionService. ``port`` is the bound port (never 0 once started).

    ``admin``: also serve PolicyAdminService on its own authenticated TLS listener (``admin_port``,
    ``admin_address``); None (the default): admin is not served at all - the Rank port never serves it."""

    def __init__(
        self,
        service: DecisionService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_concurrent_rpcs: int = 512,
        max_queue_wait_ms: float | None = DEFAULT_MAX_QUEUE_WAIT_MS,
        reuse_port: bool = False,
        admin: AdminSettings | None = None,
        wrap_servicer: Callable[[RankingServicer], pb_grpc.RankingServiceServicer] | None = None,
    ) -> None:
        """``wrap_servicer``: what serves RankingService around the plain servicer (a worker's adds its index
        to the response metadata and forwards other workers' outcomes; ``ranker.workers.forwarding``)."""
        self.service = service
        # Stamps each RPC's arrival so a Rank knows how long it queued (ranker.admission): past its surface's
        # decision budget it gets the baseline at once, past ``max_queue_wait_ms`` RESOURCE_EXHAUSTED.
        self.executor = StampingExecutor(max_workers, thread_name_prefix="rpc")
        self._server = grpc.server(
            self.executor,
            # Past this many RPCs in flight gRPC answers RESOURCE_EXHAUSTED instead of queueing without bound.
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[("grpc.so_reuseport", 1 if reuse_port else 0)],
        )
        max_queue_wait_s = None if max_queue_wait_ms is None else max_queue_wait_ms / 1000.0
        servicer: pb_grpc.RankingServiceServicer = RankingServicer(
            service, max_queue_wait_s=max_queue_wait_s, backlog=lambda: self.executor.queue_depth)
        if wrap_servicer is not None:
            servicer = wrap_servicer(servicer)  # type: ignore[arg-type]
        self.servicer = servicer
        add_ranking_service(servicer, self._server)  # Rank's request keeps its wire bytes (WireRankRequest)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((RANKING_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"could not bind {host}:{port}")
        self.address = f"{host}:{self.port}"
        # The service applied the approved caps at construction; the admin servicer only changes them.
        self.admin = None if admin is None else AdminListener(service, admin, host=host, reuse_port=reuse_port)
        self.admin_port = None if self.admin is None else self.admin.port
        self.admin_address = None if self.admin is None else self.admin.address
        self._stopped = threading.Event()
        self._health_lock = threading.Lock()  # a late set_serving(True) must not undo stop()'s NOT_SERVING

    def start(self, *, serving: bool = True) -> RankingServer:
        """Starts serving RPCs. ``serving``: what health says from here on (a worker says SERVING only once every
        worker does; ``set_serving``)."""
        self._server.start()
        if self.admin is not None:
            self.admin.start()
        # Policies are loaded by DecisionService's constructor: from here on we can serve.
        self.set_serving(serving)
        return self

    def set_serving(self, serving: bool) -> None:
        """Health of every service: SERVING or NOT_SERVING. Ignored once stopping (then always NOT_SERVING)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        with self._health_lock:
            if self._stopped.is_set():
                return
            for name in ("", RANKING_SERVICE):
                self.health.set(name, status)

    def stop(self, grace_s: float = 10.0) -> None:
        """Drains and stops; idempotent. Every acknowledged decision is in the log when this returns."""
        with self._health_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            for name in ("", RANKING_SERVICE):
                self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        admin_stopped = None if self.admin is None else self.admin.stop(grace_s)
        self._server.stop(grace_s).wait()
        if admin_stopped is not None:  # both listeners drained in the one grace period, before the service closes
            admin_stopped.wait()
        self.service.close()

    def wait(self) -> None:
        self._server.wait_for_termination()


def serve_forever(config: ServiceConfig, data_dir: Path, *, host: str, port: int, port_file: Path | None = None,
                  reuse_port: bool = False, metrics_port: int | None = None, admin: AdminSettings | None = None,
                  max_workers: int = DEFAULT_MAX_WORKERS,
                  max_queue_wait_ms: float | None = DEFAULT_MAX_QUEUE_WAIT_MS) -> NoReturn:
    """Runs until SIGTERM/SIGINT, shuts down gracefully and exits the process: status 0, or 1 when the shutdown
    outlasts SHUTDOWN_DEADLINE_S (the watchdog then dumps every thread's stack to stderr).

    ``metrics_port``: serve Prometheus metrics on ``host:metrics_port`` (0: a free port, printed on stdout as
    ``metrics on HOST:PORT``); None: metrics off, and prometheus_client is never imported. ``admin``: serve
    PolicyAdminService on its own TLS listener (printed as ``admin on HOST:PORT``); None: admin not served."""
    metrics = None
    if metrics_port is not None:
        from recsys_rl.metrics.exporter import configure_multiprocess

        configure_multiprocess(data_dir)  # before prometheus_client is imported (below)
        from recsys_rl.metrics.definitions import ServingMetrics

        metrics = ServingMetrics(list(config.surfaces))
    service = DecisionService(config, data_dir, metrics=metrics if metrics is not None else NO_METRICS)
    server = RankingServer(service, host=host, port=port, reuse_port=reuse_port, max_workers=max_workers,
                           max_queue_wait_ms=max_queue_wait_ms, admin=admin).start()
    if metrics is not None:
        from recsys_rl.metrics.exporter import start_exporter
        from recsys_rl.metrics.sampler import StateSampler

        sampler = StateSampler(service, metrics).start()
        exporter = start_exporter(host, metrics_port, refresh=sampler.sample)
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(server.port))
        tmp.replace(port_file)
    log.info("serving %s on %s (data dir %s)", ", ".join(config.surfaces), server.address, data_dir)
    # One machine-readable line on stdout, so supervisors and tests learn the bound port without polling.
    print(f"serving on {server.address}", flush=True)
    if metrics is not None:  # a second line, after the first that supervisors already read
        log.info("metrics on %s:%d", host, exporter.port)
        print(f"metrics on {host}:{exporter.port}", flush=True)
    if admin is not None and server.admin_address is not None:  # like metrics: one more line, after the others
        log.info("admin (PolicyAdminService) on %s: TLS, bearer tokens from %s", server.admin_address, admin.authz)
        print(f"admin on {server.admin_address}", flush=True)
    else:
        log.info("%s", ADMIN_NOT_SERVED)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down: draining in-flight calls and flushing logs")
    exit_by(time.monotonic() + SHUTDOWN_DEADLINE_S)
    # One budget for SIGTERM → exit, within 10 s even on a failing disk: in-flight RPCs get SHUTDOWN_GRACE_S (a
    # Rank's own decision budget is tens of ms), then the log writer (log_guard.CLOSE_TIMEOUT_S) and the learner
    # (LEARNER_STOP_S, then killed) get theirs.
    server.stop(grace_s=SHUTDOWN_GRACE_S)
    log.info("shutdown complete")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything acknowledged is written and fsynced, the learner has published and stopped: leave now rather than
    # through interpreter teardown, which joins every non-daemon thread (gRPC's and the thread pools') and runs
    # atexit hooks - a handler thread stuck in a native call would hold the exit past the deadline.
    os._exit(0)


def exit_by(deadline: float) -> None:
    """A watchdog for the shutdown budget: past ``deadline`` it dumps every thread's stack to stderr (what hung)
    and exits with status 1, so SIGTERM never outlasts its budget whatever is stuck."""

    def watch() -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)  # the whole point of this thread: wake at the deadline
        print(f"shutdown exceeded its {SHUTDOWN_DEADLINE_S:g} s budget; exiting now. Threads:", file=sys.stderr,
              flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)

    threading.Thread(target=watch, name="shutdown-watchdog", daemon=True).start()
