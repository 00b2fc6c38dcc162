"""Keeps the online learner running: notices when it dies, says so, and restarts it with backoff.

The learner is a separate process (``LearnerHandle``); it can die of a SIGKILL, the OOM killer or a crash while
the server keeps running. Serving does not depend on it: the current model versions keep serving and health
stays SERVING; only new versions stop coming. So the supervisor's job is to make the death loud (one ERROR line
with the pid and the exit code or signal) and short: a watch thread waits on the learner (``join`` waits on the
process sentinel, so a death is seen at once) and restarts it after a backoff that starts at 1 s, doubles up
to 30 s while restarts keep failing, and resets once a learner has lived a healthy minute. A restarted learner
resumes from the newest published version (see the module doc of ``recsys_rl.serving.learner``).

The same policy keeps the serving workers of ``recsys-rl serve --workers N`` running (``ranker.workers``): anything
with a pid, ``join``, ``describe_exit`` and ``stop`` can be supervised; ``what`` and the notes name it in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from recsys_rl.config import ServiceConfig
from recsys_rl.serving.learner import LearnerHandle

log = logging.getLogger(__name__)

# How often the watch thread looks at its stop flag while the learner runs (a death is seen at once).
_WATCH_S = 0.5


class Supervised(Protocol):
    """What the supervisor runs: a learner (``LearnerHandle``) or a serving worker process."""

    @property
    def pid(self) -> int | None: ...

    def join(self, timeout_s: float) -> bool: ...

    def describe_exit(self) -> str: ...

    def stop(self, timeout_s: float = 5.0) -> None: ...


class LearnerSupervisor:
    """Runs one learner via ``start(resume_after_s)`` and restarts it whenever it ends before ``stop``."""

    def __init__(self, start: Callable[[float | None], Supervised], *, first_backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, healthy_after_s: float = 60.0, what: str = "online learner",
                 while_down: str = "the current model versions keep serving",
                 on_restart: str = "it resumes from the newest published model version",
                 on_exit: Callable[[Supervised], None] | None = None) -> None:
        """``start(None)`` starts the first learner; ``start(t)`` a restarted one resuming after time ``t``.

        ``what``, ``while_down``, ``on_restart``: how the log lines name the supervised thing and what a death
        and a restart mean. ``on_exit(handle)``: called from the watch thread when it ends before ``stop``."""
        self._start = start
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._healthy_after_s = healthy_after_s
        self._what = what
        self._while_down = while_down
        self._on_restart = on_restart
        self._on_exit = on_exit
        self._lock = threading.Lock()  # orders a restart against stop(): no learner starts after stop
        self._stopping = threading.Event()
        self._first_started_at = time.time()
        self._handle = start(None)
        self._started_at = time.monotonic()
        self.restarts = 0
        self._thread = threading.Thread(target=self._watch, name="learner-supervisor", daemon=True)
        self._thread.start()

    @classmethod
    def for_mode(cls, mode: str, config: ServiceConfig, data_dir: Path, **options: float) -> LearnerSupervisor:
        """Supervises ``LearnerHandle(mode, config, data_dir)`` ("process" or "thread").

        The first learner, too, learns the decisions served after this moment (not after its own start, which a
        spawned process reaches a second or two later, while the server or its workers already serve): it starts
        like a restarted one, from the newest published version, resuming after now."""
        serving_from = time.time()
        return cls(lambda resume_after_s: LearnerHandle(
            mode, config, data_dir, resume_after_s=serving_from if resume_after_s is None else resume_after_s),
                   **options)

    @property
    def pid(self) -> int | None:
        """The current learner process's id (None in thread mode)."""
        return self._handle.pid

    def _watch(self) -> None:
        backoff_s = self._first_backoff_s
        while not self._stopping.is_set():
            handle = self._handle
            if not handle.join(_WATCH_S) or self._stopping.is_set():
                continue
            lived_s = time.monotonic() - self._started_at
            if lived_s >= self._healthy_after_s:
                backoff_s = self._first_backoff_s
            who = f"{self._what} (pid {handle.pid})" if handle.pid is not None else f"{self._what} thread"
            log.error("%s %s after %.1f s; %s; restarting it in %.0f s",
                      who, handle.describe_exit(), lived_s, self._while_down, backoff_s)
            if self._on_exit is not None:
                try:
                    self._on_exit(handle)
                except Exception:  # noqa: BLE001 - a failing hook must not stop the restarts
                    log.exception("%s: exit hook failed", self._what)
            if self._stopping.wait(backoff_s):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._handle = self._start(self._first_started_at)
                except Exception:  # noqa: BLE001 - e.g. no memory to spawn: keep trying, with backoff
                    log.exception("could not restart the %s", self._what)
                self._started_at = time.monotonic()
                if self._handle is not handle:
                    self.restarts += 1
                    log.warning("%s restarted (pid %s, restart %d); %s", self._what, self._handle.pid,
                                self.restarts, self._on_restart)
            backoff_s = min(2 * backoff_s, self._max_backoff_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops supervising and lets the current learner finish (bounded by ``timeout_s``). Idempotent.

        The handle is told first, so several supervisors stopped in parallel start their drains at once; the watch
        thread, which may be waiting out a backoff, sees the flag within ``_WATCH_S``."""
        with self._lock:
            self._stopping.set()
            handle = self._handle
        handle.stop(timeout_s)
        self._thread.join(_WATCH_S + 1.0)
