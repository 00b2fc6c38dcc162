"""One ``recsys-rl serve`` per data directory: an exclusive ``flock`` on ``D/.serve.lock``, taken at start-up.

Two servers on one data dir would interleave model versions and fight over the log writer's lock, which today
surfaces late, as a traceback, after the port is bound. Taking this lock first turns the mistake into one line
naming the directory and the process holding it (its pid is written into the lock file). The kernel drops the lock
when the process dies, however it dies, so a stale file never blocks a restart.

With ``--workers N`` the workers inherit the lock's descriptor, so the lock is held until the last process of the
tree exits: a parent killed outright leaves workers that drain and exit by themselves (within the 10 s shutdown
budget), and a new server on the directory waits for them (``wait_for_orphans_s``) instead of opening their logs
under them.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = ".serve.lock"


class DataDirInUse(RuntimeError):
    """Another live process holds the data directory."""


class DataDirLock:
    """Holds the lock until ``release()`` (or process exit). Use as a context manager."""

    def __init__(self, data_dir: Path, *, wait_for_orphans_s: float = 10.0) -> None:
        """``wait_for_orphans_s``: how long to wait when the process named in the lock file is gone but the lock
        is still held (its workers are draining)."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / LOCK_FILE
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_for_orphans_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_pid(self._fd)
                if holder is not None and not pid_alive(holder) and time.monotonic() < deadline:
                    time.sleep(0.1)  # a dead server's workers still hold it: they exit within their budget
                    continue
                os.close(self._fd)
                self._fd = None
                who = f" (pid {holder})" if holder and pid_alive(holder) else \
                    f" (workers of pid {holder}, which is gone)" if holder else ""
                raise DataDirInUse(f"--data-dir: {self.data_dir} is in use by another recsys-rl serve{who}") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def fileno(self) -> int:
        """The locked descriptor (workers inherit it: ``subprocess.Popen(pass_fds=...)``)."""
        assert self._fd is not None, "released"
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def holder_pid(data_dir: Path) -> int | None:
    """The pid written by the process that took the lock (None: no lock file or no pid in it). A worker of
    ``serve --workers N`` checks that its parent holds the lock."""
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_pid(fd)
    finally:
        os.close(fd)
