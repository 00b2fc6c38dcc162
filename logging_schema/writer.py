"""Asynchronous, crash-tolerant writer of decision/outcome log segments.

The serving path calls ``LogWriter.submit(record)`` before it replies. ``submit`` only appends the
message to an in-memory queue (no serialization, no I/O) and returns; one background thread serializes,
frames (see ``segments``), writes in batches and fsyncs. Once ``submit`` has returned, the record is
"in the writer's queue", which is what the invariant "a response is sent only for a decision whose event
is in the writer's queue" asks for. Ownership of the message passes to the writer: do not mutate it after
``submit``.

Loss window - what can be lost, exactly:

* **graceful shutdown** (``close()``, context-manager exit, or interpreter exit via ``atexit``): nothing.
  Everything submitted before ``close()`` is written and fsynced before it returns.
* **process crash** (SIGKILL, segfault, OOM kill) with the machine still up: the records still in the
  in-memory queue - those submitted but not yet handed to ``os.write``, at most ``max_queue`` and in
  practice the last few milliseconds of traffic. Records already written survive in the page cache.
* **machine crash / power loss**: additionally, written-but-unsynced data: the writer fsyncs at most
  ``fsync_interval_s`` after a write (sooner on ``flush()``, rotation and close), so at most the last
  ``fsync_interval_s`` seconds of written records (plus the queue above).
* **write error** (disk full, I/O error): the writer stops, keeps the error, and every later
  ``submit``/``flush``/``close`` raises; records queued at that moment are lost and reported by ``close``.

After any crash the segment being written may end in a torn record; readers skip and count it
(``reader.iter_records``), and a new writer starts a fresh segment rather than appending to it.

Rotation: a new segment starts when the next record would take the current one past ``rotate_bytes``
(a single larger record gets a segment of its own) or when the current one is ``rotate_seconds`` old;
an idle writer closes an aged segment without opening a new one, so no empty segments appear.

Cost: ``submit`` is ~0.6 µs (a lock, a deque append). The thread's work is dominated by
``SerializeToString`` (~30 µs for a 100-candidate DecisionEvent), which holds the GIL: under sustained
load it competes with request threads for the interpreter (see bench/logging_bench.py for figures).

One writer per log directory: a ``.writer.lock`` file (``flock``) makes a second writer on the same
directory - in this process or another - fail at construction. Serving processes forked per core each
need their own directory (e.g. ``logs/<replica>/``; the reader reads one level of subdirectories), and
each must create its writer after the fork (threads do not survive ``fork``).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zlib import crc32

from logging_schema.segments import FRAME_HEADER, HEADER_BYTES, file_header, next_sequence, segment_name
from recsys_rl.errors import NotReady, Overloaded
from recsys_rl.logging.v1.events_pb2 import LogRecord

LOCK_FILE = ".writer.lock"
# Hand bytes to the kernel in chunks of about this size, so a large batch does not build one huge buffer
# and the ``written`` counter moves while a burst is drained.
_WRITE_CHUNK_BYTES = 1 << 20
# The writer thread's only data-path system calls, named here so tests can inject a full disk or a stalled
# device without touching os for everything else in the process.
_write = os.write
_fsync = os.fsync


class LogWriterError(RuntimeError):
    """The log writer cannot accept or persist records (see the message for why)."""


class LogWriterClosed(LogWriterError, NotReady):
    """``submit`` after ``close()`` or after the writer stopped on a write error."""


class LogQueueFull(LogWriterError, Overloaded):
    """``submit`` while ``max_queue`` records are already waiting to be written: shed load."""


class DeferredRecord:
    """A record whose protobuf is built on the writer's thread, off the request path.

    Copying a 100-candidate request into a DecisionEvent costs ~100 µs; deferring it lets Rank reply first.
    ``build`` must only read objects nobody mutates after ``submit`` (the request, the decision) and must
    not fail: it is part of the record's content, which is queued (and so acknowledged) already.
    """

    __slots__ = ("build",)

    def __init__(self, build: Callable[[], LogRecord]) -> None:
        self.build = build


@dataclass(frozen=True)
class WriterStats:
    """A snapshot of the writer's counters; ``submitted - written`` is the queue depth."""

    submitted: int
    written: int
    synced: int
    bytes: int
    segments: int


class LogWriter:
    """Writes ``LogRecord`` messages to segments in ``log_dir`` from a background thread."""

    def __init__(
        self,
        log_dir: Path,
        *,
        rotate_bytes: int = 64 << 20,
        rotate_seconds: float = 3600.0,
        fsync_interval_s: float = 0.2,
        max_queue: int = 100_000,
    ) -> None:
        if rotate_bytes <= 0:
            raise ValueError(f"rotate_bytes: must be positive, got {rotate_bytes}")
        if not rotate_seconds > 0:
            raise ValueError(f"rotate_seconds: must be positive, got {rotate_seconds}")
        if not fsync_interval_s >= 0:
            raise ValueError(f"fsync_interval_s: must be >= 0, got {fsync_interval_s}")
        if max_queue <= 0:
            raise ValueError(f"max_queue: must be positive, got {max_queue}")
        self.log_dir = Path(log_dir)
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.fsync_interval_s = fsync_interval_s
        self.max_queue = max_queue

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_dir_lock()
        self._sequence = next_sequence(self.log_dir)

        # One lock, two conditions: ``_work`` wakes the writer thread, ``_done`` wakes flush() callers.
        # Separate conditions so that submit's notify() can never be swallowed by a waiting flush().
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._queue: deque[LogRecord] = deque()
        self._closing = False
        self._idle = False
        self._failure: BaseException | None = None
        self._flush_target = 0

        # Counters. ``_submitted`` is written under the lock by submitters; the others only by the thread.
        self._submitted = 0
        self._written = 0
        self._synced = 0
        self._bytes = 0
        self._segments = 0

        # State of the open segment, touched only by the writer thread.
        self._fd: int | None = None
        self._segment_bytes = 0
        self._segment_opened = 0.0
        self._last_fsync = time.monotonic()

        self._thread = threading.Thread(target=self._run, name=f"LogWriter({self.log_dir})", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    # ----------------------------------------------------------------------------------- public API

    def submit(self, record: LogRecord | DeferredRecord) -> None:
        """Queue ``record`` for writing and return at once; raise instead of ever blocking.

        Raises LogWriterClosed after ``close()`` (or a write error), LogQueueFull when ``max_queue``
        records are waiting, TypeError/ValueError for something that is not a LogRecord with an event.
        A ``DeferredRecord`` is built on the writer's thread (see there).
        """
        if not isinstance(record, DeferredRecord):
            if not isinstance(record, LogRecord):
                raise TypeError(f"record: expected recsys_rl.logging.v1.LogRecord, got {type(record).__name__}")
            if record.WhichOneof("event") is None:
                raise ValueError("record.event: neither decision nor outcome is set")
        with self._lock:
            if self._closing or self._failure is not None:
                raise self._closed_error()
            if self._submitted - self._written >= self.max_queue:
                raise LogQueueFull(f"log writer queue is full ({self.max_queue} records waiting to be written)")
            self._queue.append(record)
            self._submitted += 1
            if self._idle:
                self._work.notify()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted before this call is written and fsynced.

        Returns True when it is, False when ``timeout`` seconds passed first. Raises LogWriterError if
        the writer stopped on a write error before reaching them.
        """
        with self._lock:
            target = self._submitted
            if target > self._flush_target:
                self._flush_target = target
                self._work.notify()
            done = self._done.wait_for(
                lambda: self._synced >= target or self._failure is not None or not self._thread.is_alive(),
                timeout,
            )
            if self._failure is not None and self._synced < target:
                raise LogWriterError(f"log writer stopped on a write error: {self._failure}") from self._failure
            return bool(done) and self._synced >= target

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting records, write and fsync everything queued, close the segment. Idempotent.

        Raises LogWriterError when the writer had stopped on a write error (naming how many submitted
        records were not written), or when ``timeout`` passes before the queue is drained.
        """
        with self._lock:
            self._closing = True
            self._work.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise LogWriterError(f"close: {self._submitted - self._written} records still queued after {timeout} s")
        atexit.unregister(self._close_at_exit)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        if self._failure is not None:
            lost = self._submitted - self._synced
            raise LogWriterError(
                f"log writer stopped on a write error; {lost} submitted records may not be on disk: {self._failure}"
            ) from self._failure

    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(self._submitted, self._written, self._synced, self._bytes, self._segments)

    @property
    def closed(self) -> bool:
        return self._closing

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._closing and self._flush_target <= self._synced:
                        timeout = self._next_deadline()
                        if timeout is not None and timeout <= 0:
                            break
                        self._idle = True
                        self._work.wait(timeout)
                        self._idle = False
                    # Swap the whole queue out: O(1) under the lock, submitters never wait on I/O.
                    batch, self._queue = self._queue, deque()
                    closing = self._closing
                if batch:
                    self._write_batch(batch)
                self._housekeeping(closing and not batch)
                if closing and not batch:
                    with self._lock:
                        if not self._queue:
                            break
            self._close_segment(sync=True)
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised to callers of flush/close
            with self._lock:
                self._failure = exc
        finally:
            if self._fd is not None:  # only after a failure: close without trusting fsync
                fd, self._fd = self._fd, None
                try:
                    os.close(fd)
                except OSError:
                    pass
            with self._lock:
                self._done.notify_all()

    def _next_deadline(self) -> float | None:
        """Seconds until the thread has timed work (a due fsync or an aged segment), None if none."""
        now = time.monotonic()
        deadlines = []
        if self._written > self._synced:
            deadlines.append(self._last_fsync + self.fsync_interval_s - now)
        if self._fd is not None:
            deadlines.append(self._segment_opened + self.rotate_seconds - now)
        return min(deadlines) if deadlines else None

    def _write_batch(self, batch: deque[LogRecord]) -> None:
        buffer = bytearray()
        pending = 0
        pack = FRAME_HEADER.pack
        if self._fd is not None and time.monotonic() - self._segment_opened >= self.rotate_seconds:
            self._close_segment(sync=True)
        for record in batch:
            payload = (record.build() if isinstance(record, DeferredRecord) else record).SerializeToString()
            framed = FRAME_HEADER.size + len(payload)
            if (
                self._fd is not None
                and self._segment_bytes + len(buffer) + framed > self.rotate_bytes
                and self._segment_bytes + len(buffer) > HEADER_BYTES  # holds a record already
            ):
                self._write_out(buffer, pending)
                buffer, pending = bytearray(), 0
                self._close_segment(sync=True)
            if self._fd is None:
                self._open_segment()
            buffer += pack(len(payload), crc32(payload))
            buffer += payload
            pending += 1
            if len(buffer) >= _WRITE_CHUNK_BYTES:
                self._write_out(buffer, pending)
                buffer, pending = bytearray(), 0
        if pending:
            self._write_out(buffer, pending)

    def _write_out(self, buffer: bytearray, records: int) -> None:
        assert self._fd is not None
        view = memoryview(buffer)
        while view:
            view = view[_write(self._fd, view) :]
        self._segment_bytes += len(buffer)
        with self._lock:
            self._written += records
            self._bytes += len(buffer)

    def _housekeeping(self, closing: bool) -> None:
        now = time.monotonic()
        dirty = self._written > self._synced
        if dirty and (closing or self._flush_target > self._synced or now - self._last_fsync >= self.fsync_interval_s):
            self._sync()
        if self._fd is not None and now - self._segment_opened >= self.rotate_seconds:
            self._close_segment(sync=True)

    def _sync(self) -> None:
        if self._fd is not None:
            _fsync(self._fd)
        self._last_fsync = time.monotonic()
        with self._lock:
            # Earlier segments were fsynced when they were closed, so every written record is durable now.
            self._synced = self._written
            self._done.notify_all()

    def _open_segment(self) -> None:
        path = self.log_dir / segment_name(self._sequence)
        # O_EXCL: never reuse a name, even if another process slipped a segment in.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._sequence += 1
        header = file_header()
        _write(self._fd, header)
        # Make the new directory entry durable, or a machine crash could lose the whole file.
        dir_fd = os.open(self.log_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._segment_bytes = len(header)
        self._segment_opened = time.monotonic()
        with self._lock:
            self._segments += 1
            self._bytes += len(header)

    def _close_segment(self, *, sync: bool) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if sync:
                _fsync(fd)
                self._last_fsync = time.monotonic()
                with self._lock:
                    self._synced = self._written
                    self._done.notify_all()
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------------------ helpers

    def _acquire_dir_lock(self) -> int:
        fd = os.open(self.log_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogWriterError(
                f"log_dir: {self.log_dir} is already being written by another LogWriter "
                "(one writer per directory; give each serving process its own)"
            ) from None
        return fd

    def _closed_error(self) -> LogWriterClosed:
        if self._failure is not None:
            error = LogWriterClosed(f"log writer stopped on a write error: {self._failure}")
            error.__cause__ = self._failure
            return error
        return LogWriterClosed("log writer is closed")

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except LogWriterError:
            pass  # at interpreter exit there is nobody left to tell; the error was already raised to flush()
