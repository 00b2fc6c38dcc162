"""The parent of ``recsys-rl serve --workers N``: spawns the workers, keeps them running, runs the learner.

Start-up: reserve the port (a SO_REUSEPORT socket bound, never listening, so ``--port 0`` picks one port that stays
ours while workers come and go), start worker 0 and wait until it serves (it makes a fresh data dir's first model
version and audit entries, so no two workers race to), then the others in parallel. Once all serve: the online
learner (one process, following every worker's stream), the metrics exporter, the port file, and ``serving on
HOST:PORT`` on stdout. A worker that exits before its first ``serving on`` during start-up stops the start (exit 1).

Running: each worker is supervised like the learner (``recsys_rl.serving.supervisor``): a death is one ERROR line
(pid, exit code or signal), its live metrics leave the sums, ``D/run/workers.json`` drops it (every worker's health
goes NOT_SERVING) and it is restarted after a backoff (1 s doubling to 30 s while it keeps dying); the others keep
serving.

SIGTERM/SIGINT: workers.json says stopping, every worker gets SIGTERM at once and drains in parallel (killed past
WORKER_STOP_S), then the learner publishes and stops; exit 0 within SHUTDOWN_DEADLINE_S (the same watchdog as one
server).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import recsys_rl
from ranker.admin_auth import AdminSettings
from ranker.server import ADMIN_NOT_SERVED, SHUTDOWN_DEADLINE_S, exit_by
from ranker.workers.layout import STATUS_FILE, health_ack, read_generation, run_dir, write_status
from recsys_rl.config import ServiceConfig
from recsys_rl.serving.learner import describe_exit_code
from recsys_rl.serving.service import LEARNER_STOP_S
from recsys_rl.serving.supervisor import LearnerSupervisor, Supervised

log = logging.getLogger(__name__)

# Of the 10 s SIGTERM budget: the workers drain in parallel (a worker needs ~1.5 s grace + up to 3 s for its log),
# then the learner gets LEARNER_STOP_S.
WORKER_STOP_S = SHUTDOWN_DEADLINE_S - LEARNER_STOP_S - 0.5


class StartFailed(RuntimeError):
    """A worker exited before serving during start-up."""


class WorkerHandle:
    """One worker process; ``ready`` is set once it printed ``serving on``. Its stderr is the parent's."""

    def __init__(self, index: int, command: list[str], env: dict[str, str],
                 on_ready: Callable[[WorkerHandle], None], *, pass_fds: tuple[int, ...] = ()) -> None:
        self.index = index
        self.ready = threading.Event()
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
                                         text=True, pass_fds=pass_fds)
        threading.Thread(target=self._read, args=(on_ready,), name=f"worker-{index}-stdout", daemon=True).start()

    def _read(self, on_ready: Callable[[WorkerHandle], None]) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:  # until the worker exits (EOF)
            if line.startswith("serving on ") and not self.ready.is_set():
                self.ready.set()
                on_ready(self)

    @property
    def pid(self) -> int:
        return self._process.pid

    def join(self, timeout_s: float) -> bool:
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def describe_exit(self) -> str:
        return describe_exit_code(self._process.returncode)

    def stop(self, timeout_s: float = WORKER_STOP_S) -> None:
        """SIGTERM (the worker drains and flushes its log); SIGKILL past ``timeout_s``."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        if self.join(timeout_s):
            if self._process.returncode not in (0, -signal.SIGTERM):
                log.error("worker %d (pid %d) %s while stopping", self.index, self.pid, self.describe_exit())
            return
        log.error("worker %d (pid %d) did not stop within %.1f s; killing it", self.index, self.pid, timeout_s)
        self._process.kill()
        self.join(2.0)


class Fleet:
    """N supervised workers and the status file they read their health from."""

    def __init__(self, data_dir: Path, workers: int, command: Callable[[int], list[str]], *,
                 metrics: bool, lock_fd: int | None = None) -> None:
        """``lock_fd``: the data dir lock, inherited by every worker so the lock outlives a killed parent until its
        workers have drained (``recsys_rl.serving.dirlock``)."""
        self.data_dir = Path(data_dir)
        self._pass_fds = () if lock_fd is None else (lock_fd,)
        self.workers = workers
        self._command = command
        self._metrics = metrics
        self._env = _worker_env()
        self._lock = threading.Condition()
        self._serving: dict[int, int] = {}  # index -> pid of the incarnation serving
        self._stopping = False
        self._failed_start: str | None = None
        self._generation = 0  # of workers.json; workers acknowledge the one their health reflects
        self._supervisors: dict[int, LearnerSupervisor] = {}
        run_dir(self.data_dir).mkdir(parents=True, exist_ok=True)
        self._write()

    def _write(self) -> None:  # callers hold the lock
        self._generation += 1
        write_status(self.data_dir, {"generation": self._generation, "workers": self.workers,
                                     "serving": sorted(self._serving),
                                     "pids": {str(k): pid for k, pid in sorted(self._serving.items())},
                                     "stopping": self._stopping, "parent_pid": os.getpid()})

    def _start(self, index: int) -> WorkerHandle:
        return WorkerHandle(index, self._command(index), self._env, self._on_ready, pass_fds=self._pass_fds)

    def _on_ready(self, handle: WorkerHandle) -> None:
        with self._lock:
            self._serving[handle.index] = handle.pid
            self._write()
            self._lock.notify_all()
        log.info("worker %d (pid %d) is serving", handle.index, handle.pid)

    def _on_exit(self, handle: Supervised) -> None:
        assert isinstance(handle, WorkerHandle)
        with self._lock:
            if self._serving.get(handle.index) == handle.pid:
                del self._serving[handle.index]
            if not handle.ready.is_set() and self._failed_start is None:
                self._failed_start = f"worker {handle.index} (pid {handle.pid}) {handle.describe_exit()}"
            self._write()
            self._lock.notify_all()
        if self._metrics:
            from recsys_rl.metrics.exporter import mark_worker_dead

            mark_worker_dead(handle.pid)  # its live gauges leave the sums; its counters stay

    def start(self, indices: range, stop: threading.Event) -> None:
        """Starts workers ``indices`` and waits until they serve. Raises StartFailed if one exits first; returns
        early when ``stop`` is set."""
        for index in indices:
            self._supervisors[index] = LearnerSupervisor(
                lambda _resume, index=index: self._start(index), what=f"worker {index}",
                while_down="the other workers keep serving; health is NOT_SERVING until it is back",
                on_restart="it serves on the same port and recovers its open decisions from its log stream",
                on_exit=self._on_exit)
        with self._lock:
            while not stop.is_set() and not set(indices) <= set(self._serving):
                if self._failed_start is not None:
                    raise StartFailed(f"{self._failed_start} during start-up; see its log above")
                self._lock.wait(0.1)

    def wait_healthy(self, stop: threading.Event, timeout_s: float = 10.0) -> None:
        """Waits (bounded) until every worker's health reflects a status in which all serve: from then on a
        health check through any connection says SERVING."""
        with self._lock:
            generation = self._generation
        deadline = time.monotonic() + timeout_s
        acks = [health_ack(self.data_dir, k) for k in range(self.workers)]
        while not stop.is_set() and any(read_generation(ack) < generation for ack in acks):
            if time.monotonic() > deadline:
                log.warning("workers' health did not acknowledge status %d within %.0f s", generation, timeout_s)
                return
            stop.wait(0.02)

    def pids(self) -> dict[int, int]:
        with self._lock:
            return dict(self._serving)

    def stop(self) -> None:
        """Every worker drains in parallel (SIGTERM at once); returns when all have exited."""
        with self._lock:
            self._stopping = True
            self._write()  # health NOT_SERVING everywhere, before the first worker stops taking calls
        threads = [threading.Thread(target=supervisor.stop, args=(WORKER_STOP_S,), name=f"stop-worker-{index}")
                   for index, supervisor in self._supervisors.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for path in [run_dir(self.data_dir) / STATUS_FILE, *(health_ack(self.data_dir, k) for k in range(self.workers))]:
            path.unlink(missing_ok=True)


def reserve_port(host: str, port: int, flag: str = "--port") -> tuple[socket.socket, int]:
    """Binds (never listens on) a SO_REUSEPORT socket at ``host:port``: ``port`` 0 picks a free port, which stays
    ours while it is bound. Raises OSError naming --port when the port is taken by a process outside the group."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    family, kind, proto, _, address = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"{flag}: cannot bind {host}:{port}: {exc.strerror}") from None
    return sock, sock.getsockname()[1]


def _worker_env() -> dict[str, str]:
    """The parent's environment, with the code it runs importable by ``python -m recsys_rl.cli`` from anywhere."""
    env = dict(os.environ)
    root = str(Path(recsys_rl.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def serve_workers(argv: list[str], config: ServiceConfig, data_dir: Path, *, workers: int, host: str, port: int,
                  port_file: Path | None = None, metrics_port: int | None = None,
                  admin: AdminSettings | None = None, lock_fd: int | None = None) -> NoReturn:
    """Runs ``workers`` worker processes until SIGTERM/SIGINT, then stops them and the learner and exits (0; 1
    when a worker fails to start or the shutdown outlasts its budget).

    ``argv``: this ``serve`` command line; each worker runs it again with ``--workers N --port P --worker-index K``
    appended (the last occurrence of a flag wins), so every serve flag reaches the workers unchanged. ``admin``: its
    port is reserved here like the Rank port (``--admin-port 0`` is one port for every worker) and appended too."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    reservation, port = reserve_port(host, port)
    admin_reservation, admin_args, admin_address = None, [], ""
    if admin is not None:
        admin_host = admin.host or host
        admin_reservation, admin_port = reserve_port(admin_host, admin.port, "--admin-port")
        admin_args, admin_address = ["--admin-port", str(admin_port)], f"{admin_host}:{admin_port}"
    if metrics_port is not None:
        from recsys_rl.metrics.exporter import configure_multiprocess

        if configure_multiprocess(data_dir) is None:  # workers would each count alone: refuse rather than mislead
            raise OSError(f"--metrics-port: cannot use {data_dir / 'run' / 'metrics'} for multiprocess metrics")

    def command(index: int) -> list[str]:
        return [sys.executable, "-m", "recsys_rl.cli", *argv, "--workers", str(workers), "--port", str(port),
                *admin_args, "--worker-index", str(index)]

    fleet = Fleet(data_dir, workers, command, metrics=metrics_port is not None, lock_fd=lock_fd)
    learner: LearnerSupervisor | None = None
    exporter = None
    try:
        fleet.start(range(0, 1), stop)  # worker 0 alone first: it initialises a fresh data dir
        fleet.start(range(1, workers), stop)
        fleet.wait_healthy(stop)
    except StartFailed as exc:
        log.error("%s", exc)
        print(f"recsys-rl serve: {exc}", file=sys.stderr, flush=True)
        _shutdown(fleet, None, None, exit_code=1)
    if not stop.is_set():
        learner = LearnerSupervisor.for_mode("process", config, data_dir)
        if metrics_port is not None:
            from recsys_rl.metrics.exporter import start_exporter

            exporter = start_exporter(host, metrics_port)
        if port_file is not None:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(str(port))
            tmp.replace(port_file)
        address = f"{host}:{port}"
        log.info("serving %s on %s with %d workers (pids %s; data dir %s)", ", ".join(config.surfaces), address,
                 workers, ", ".join(str(pid) for _, pid in sorted(fleet.pids().items())), data_dir)
        print(f"serving on {address}", flush=True)
        if exporter is not None:
            log.info("metrics on %s:%d", host, exporter.port)
            print(f"metrics on {host}:{exporter.port}", flush=True)
        if admin_address:  # like a single server: one more line, after the others
            log.info("admin (PolicyAdminService) on %s in every worker: TLS, bearer tokens from %s", admin_address,
                     admin.authz)  # type: ignore[union-attr]
            print(f"admin on {admin_address}", flush=True)
        else:
            log.info("%s", ADMIN_NOT_SERVED)
        stop.wait()
    log.info("shutting down: every worker drains, then the learner publishes")
    reservation.close()
    if admin_reservation is not None:
        admin_reservation.close()
    _shutdown(fleet, learner, exporter, exit_code=0)


def _shutdown(fleet: Fleet, learner: LearnerSupervisor | None, exporter: object, *, exit_code: int) -> NoReturn:
    exit_by(time.monotonic() + SHUTDOWN_DEADLINE_S)
    fleet.stop()
    if learner is not None:
        learner.stop(LEARNER_STOP_S)
    if exporter is not None:
        exporter.stop()  # type: ignore[attr-defined]
    log.info("shutdown complete")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
