"""Asynchronous, fault-tolerant writer of decision/outcome log segments.

The serving path calls ``LogWriter.submit(record)`` before it replies. ``submit`` only appends the
message to an in-memory queue (no serialization, no I/O) and returns; one background thread serializes,
frames (see ``segments``), writes in batches and fsyncs. Once ``submit`` has returned, the record is
"in the writer's queue", which is what the invariant "a response is sent only for a decision whose event
is in the writer's queue" asks for. Ownership of the message passes to the writer: do not mutate it after
``submit``.

Write errors (disk full, EIO: any OSError from opening, writing, truncating or fsyncing a segment) do not
stop the writer. It turns *unavailable* (``available`` is False, ``health()`` names the first error and
since when), keeps every record it holds, and retries with exponential backoff (50 ms doubling to 1 s).
While unavailable, ``submit`` raises LogUnavailable at once, so the queue stops growing and the caller
decides what to serve without a record (``recsys_rl.serving.log_guard``); the records already accepted are
written, in order, once the disk takes them, and the writer is available again by itself. A chunk that the
kernel took only in part is cut back (``ftruncate``) to its last complete record, so a segment never holds a
torn record in its middle; if even the truncate fails, that segment is abandoned (its torn tail is skipped
and counted by readers, as after a crash) and writing continues in a new one.

A ``DeferredRecord`` whose ``build`` raises is logged, counted (``WriterStats.build_errors``) and skipped;
the writer goes on with the next record.

Loss window - what can be lost, exactly:

* **graceful shutdown** (``close()``, context-manager exit, or interpreter exit via ``atexit``): nothing,
  when the disk takes the records before ``close``'s timeout. Otherwise ``close`` gives up at its timeout
  and raises LogRecordsLost naming how many accepted records are not confirmed on disk.
* **process crash** (SIGKILL, segfault, OOM kill) with the machine still up: the records still in memory -
  those submitted but not yet handed to ``os.write``, at most ``max_queue`` (during a write-error episode:
  every record accepted before it began, also at most ``max_queue``). Records already written survive in
  the page cache.
* **machine crash / power loss**: additionally, written-but-unsynced data: the writer fsyncs at most
  ``fsync_interval_s`` after a write (sooner on ``flush()``, rotation and close), so at most the last
  ``fsync_interval_s`` seconds of written records (plus the above). A failed fsync is retried like a failed
  write; on Linux the pages it could not write may already be dropped, so those records are uncertain.

After any crash the segment being written may end in a torn record; readers skip and count it
(``reader.iter_records``), and a new writer starts a fresh segment rather than appending to it.

Rotation: a new segment starts when the next record would take the current one past ``rotate_bytes``
(a single larger record gets a segment of its own) or when the current one is ``rotate_seconds`` old;
an idle writer closes an aged segment without opening a new one, so no empty segments appear.

Cost: ``submit`` is ~0.6 µs (a lock, a deque append), ~2.3 µs when it wakes the idle thread. The thread's work is dominated by
``SerializeToString`` (~30 µs for a 100-candidate DecisionEvent), which holds the GIL: under sustained
load it competes with request threads for the interpreter (see bench/logging_bench.py for figures).

One writer per log directory: a ``.writer.lock`` file (``flock``) makes a second writer on the same
directory - in this process or another - fail at construction. Serving processes forked per core each
need their own directory, their stream ``logs/worker-K/`` (``segments.stream_dir``; readers read every stream), and
each must create its writer after the fork (threads do not survive ``fork``).

This package imports nothing of ours but the generated stubs, so its errors are its own classes;
``ranker/errors.py`` maps them to gRPC status codes.
"""

from __future__ import annotations

import atexit
import bisect
import errno
import fcntl
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zlib import crc32

from google.protobuf.message import Message

from logging_schema.columnar import columnar_frames, write_columnar
from logging_schema.companions import compact_record, entry_bytes, remove_partial, write_companion
from logging_schema.segments import FRAME_HEADER, HEADER_BYTES, file_header, next_sequence, segment_name
from recsys_rl.logging.v1.events_pb2 import LogRecord

log = logging.getLogger(__name__)

LOCK_FILE = ".writer.lock"
# Hand bytes to the kernel in chunks of about this size, so a large batch does not build one huge buffer
# and the ``written`` counter moves while a burst is drained.
_WRITE_CHUNK_BYTES = 1 << 20
# The writer thread's only data-path system calls, named here so tests can inject a full disk or a stalled
# device without touching os for everything else in the process.
_write = os.write
_fsync = os.fsync
_ftruncate = os.ftruncate
# Retry a failed write after this long, doubling up to the maximum: a disk that gets space back is used
# again within about a second, and a dead one costs a few system calls a second, not a busy loop.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0


class LogWriterError(RuntimeError):
    """The log writer cannot accept or persist records (see the message for why)."""


class LogWriterClosed(LogWriterError):
    """``submit`` after ``close()`` (or after the writer thread died on an unexpected error)."""


class LogQueueFull(LogWriterError):
    """``submit`` while ``max_queue`` records are already waiting to be written: shed load."""


class LogUnavailable(LogWriterError):
    """``submit`` while the writer cannot write (disk full, I/O error) and is retrying what it holds."""


class LogRecordsLost(LogWriterError):
    """``close`` gave up: ``unwritten`` accepted records are not confirmed on disk."""

    def __init__(self, message: str, unwritten: int) -> None:
        super().__init__(message)
        self.unwritten = unwritten


class DeferredRecord:
    """A record whose protobuf is built on the writer's thread, off the request path.

    Building a DecisionEvent costs tens of µs (its slate, its candidates' bytes); deferring it lets Rank reply first.
    ``build`` returns a LogRecord or a message wire-compatible with one (``views.WireRecord``: it is only
    serialized). It must only read objects nobody mutates after ``submit`` (the request, the decision). If it
    raises, the record is skipped, logged and counted (``WriterStats.build_errors``); the writer goes on.
    """

    __slots__ = ("build",)

    def __init__(self, build: Callable[[], Message]) -> None:
        self.build = build


@dataclass(frozen=True)
class WriterStats:
    """A snapshot of the writer's counters; ``submitted - written - build_errors`` is the queue depth."""

    submitted: int
    written: int
    synced: int
    bytes: int
    segments: int
    build_errors: int = 0  # deferred records whose build raised: skipped
    write_errors: int = 0  # failed attempts to open, write, truncate or fsync (each retried)
    unwritten: int = 0  # accepted records close() gave up on (not confirmed on disk)
    companions: int = 0  # what-if companions written, one per closed segment (logging_schema.companions)
    companion_errors: int = 0  # companions that could not be written (skipped: readers read those segments whole)


@dataclass(frozen=True)
class WriterHealth:
    """Whether the writer takes records. ``error``/``since`` (unix seconds) describe the current episode."""

    available: bool
    error: str = ""
    since: float | None = None
    held: int = 0  # records accepted and not yet written (retried while unavailable)


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
        companions: bool = True,
        columnar: bool = True,
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
        self.companions = companions
        self.columnar = companions and columnar  # the columnar companion (logging_schema.columnar) beside the row one

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_dir_lock()
        remove_partial(self.log_dir)  # a crashed writer's half-written companion
        self._sequence = next_sequence(self.log_dir)

        # ``_lock`` guards the state below; ``_done`` (a condition on it) wakes flush() callers. The writer thread
        # sleeps on ``_wake``, a bare lock used as a one-shot signal (not a Condition: a submit that wakes it costs
        # ~2.3 µs rather than ~2.9 µs with Condition.notify's Python, paid by every Rank that finds the writer idle).
        # ``_wake`` is held (locked) except between a ``_wake_up`` and the writer taking it back; ``_woken`` says
        # which, under ``_lock``, so it is released at most once per sleep.
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._wake = threading.Lock()
        self._wake.acquire()
        self._woken = False
        self._queue: deque[LogRecord | DeferredRecord] = deque()
        self._closing = False
        self._close_deadline: float | None = None
        self._idle = False
        self._failure: BaseException | None = None  # an unexpected (non-OSError) error ended the thread
        self._flush_target = 0

        # Write-error episode: read without the lock by ``available`` (a bool read is atomic).
        self._available = True
        self._error: OSError | None = None
        self._unavailable_since: float | None = None
        self._retry_at: float | None = None
        self._failures_in_row = 0

        # Counters, in record order. ``_submitted`` is written under the lock by submitters; the others only by
        # the thread (under the lock). ``_handled`` = written + skipped, so "the first k records are handled"
        # holds exactly; ``_handled_synced`` is ``_handled`` at the last fsync (what flush() waits for).
        self._submitted = 0
        self._written = 0
        self._synced = 0
        self._handled = 0
        self._handled_synced = 0
        self._build_errors = 0
        self._write_errors = 0
        self._unwritten = 0
        self._bytes = 0
        self._segments = 0
        self._companions = 0
        self._companion_errors = 0

        # Touched only by the writer thread: records taken from the queue as framed bytes (None = a deferred
        # record whose build failed, kept in line so counting stays in order), and the open segment.
        self._frames: deque[bytes | None] = deque()
        # Beside each held frame, the record as the segment's what-if companion keeps it and its candidate count
        # (None: no companion); the open segment's companion entries, None once it cannot have a companion.
        self._compacts: deque[tuple[bytes, int] | None] = deque()
        self._companion: list[bytes] | None = None
        self._columnar_jobs: ThreadPoolExecutor | None = None  # converts sealed segments' companions to columns
        self._segment_path: Path | None = None
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

        Raises LogWriterClosed after ``close()``, LogUnavailable while write errors are being retried,
        LogQueueFull when ``max_queue`` records are waiting, TypeError/ValueError for something that is not
        a LogRecord with an event. A ``DeferredRecord`` is built on the writer's thread (see there).
        """
        if not isinstance(record, DeferredRecord):
            if not isinstance(record, LogRecord):
                raise TypeError(f"record: expected recsys_rl.logging.v1.LogRecord, got {type(record).__name__}")
            if record.WhichOneof("event") is None:
                raise ValueError("record.event: no event (decision, outcome or gap) is set")
        with self._lock:
            if self._closing or self._failure is not None:
                raise self._closed_error()
            if not self._available:
                raise LogUnavailable(self._unavailable_message())
            if self._submitted - self._handled >= self.max_queue:
                raise LogQueueFull(f"log writer queue is full ({self.max_queue} records waiting to be written)")
            self._queue.append(record)
            self._submitted += 1
            if self._idle:
                self._wake_up()

    @property
    def available(self) -> bool:
        """True when ``submit`` would take a record (not closed, no write-error episode). Lock-free."""
        return self._available and not self._closing and self._failure is None

    def health(self) -> WriterHealth:
        with self._lock:
            if self.available:
                return WriterHealth(True, held=self._submitted - self._handled)
            if self._failure is not None or self._closing and self._available:
                reason = f"closed: {self._failure}" if self._failure is not None else "closed"
                return WriterHealth(False, reason, None, self._submitted - self._handled)
            return WriterHealth(False, _describe(self._error), self._unavailable_since,
                                self._submitted - self._handled)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted before this call is written and fsynced (or skipped).

        Returns True when it is, False when ``timeout`` seconds passed first (e.g. the disk is full and
        the writer is still retrying). Raises LogWriterError if the writer thread died.
        """
        with self._lock:
            target = self._submitted
            if target > self._flush_target:
                self._flush_target = target
                self._wake_up()
            done = self._done.wait_for(
                lambda: self._handled_synced >= target or not self._thread.is_alive(), timeout
            )
            if self._handled_synced < target and self._failure is not None:
                raise LogWriterError(f"log writer stopped on an unexpected error: {self._failure}") from self._failure
            return bool(done) and self._handled_synced >= target

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting records, write and fsync everything held, close the segment. Idempotent.

        Returns within ``timeout`` seconds (None: wait as long as it takes) even when the disk keeps
        failing: the writer then gives up and LogRecordsLost names how many accepted records are not
        confirmed on disk (also in ``stats().unwritten``).
        """
        with self._lock:
            if not self._closing:
                self._closing = True
                if timeout is not None:
                    # Give up a little before the caller's deadline, so the thread has ended when join returns.
                    self._close_deadline = time.monotonic() + max(0.0, timeout - min(0.2, timeout / 4))
            self._wake_up()
        self._thread.join(timeout)
        if self._thread.is_alive():  # stuck inside a system call (a hung device): leave it to the daemon flag
            lost = self._submitted - self._synced - self._build_errors
            raise LogRecordsLost(f"close: the log writer is still busy after {timeout} s; {lost} accepted records "
                                 "are not confirmed on disk", lost)
        atexit.unregister(self._close_at_exit)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        if self._failure is not None or self._unwritten:
            cause = self._failure if self._failure is not None else self._error
            raise LogRecordsLost(
                f"log writer gave up: {self._unwritten} accepted records could not be written "
                f"({_describe(cause)})", self._unwritten,
            ) from cause

    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(self._submitted, self._written, self._synced, self._bytes, self._segments,
                               self._build_errors, self._write_errors, self._unwritten, self._companions,
                               self._companion_errors)

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
                    while self._should_wait():
                        timeout = self._next_deadline()
                        if timeout is not None and timeout <= 0:
                            break
                        self._sleep(timeout)
                    # Swap the whole queue out: O(1) under the lock, submitters never wait on I/O.
                    batch, self._queue = self._queue, deque()
                    closing = self._closing
                for record in batch:
                    self._frames.append(self._frame(record))
                if closing and self._past_close_deadline():
                    break  # gave up: what is still held is counted as unwritten below
                if self._retry_at is None or time.monotonic() >= self._retry_at:
                    try:
                        self._drain()
                        self._housekeeping(closing)
                        if closing:  # nothing can be submitted any more: the queue was swapped out empty
                            self._close_segment(sync=True)
                    except OSError as exc:
                        self._on_write_error(exc)
                    else:
                        self._on_write_success()
                        if closing:
                            break
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised to callers of flush/close
            log.exception("log writer thread stopped on an unexpected error")
            with self._lock:
                self._failure = exc
        finally:
            if self._columnar_jobs is not None:  # the last segments' columns, done before the thread ends
                late = self._past_close_deadline()  # then what has not started is dropped: readers go record by record
                self._columnar_jobs.shutdown(wait=not late, cancel_futures=late)
            if self._fd is not None:  # gave up or failed: close without trusting fsync
                fd, self._fd = self._fd, None
                try:
                    os.close(fd)
                except OSError:
                    pass
            with self._lock:
                self._unwritten = self._submitted - self._synced - self._build_errors
                self._done.notify_all()

    def _wake_up(self) -> None:
        """Ends the writer thread's current or next sleep (called under ``_lock``)."""
        if not self._woken:
            self._woken = True
            self._wake.release()

    def _sleep(self, timeout: float | None) -> None:
        """Sleeps until ``_wake_up`` or ``timeout`` (called under ``_lock``, released while asleep).

        No wake-up is lost: ``_idle`` is set under ``_lock`` before it is released, so a submit after that wakes the
        writer (``_wake`` released before the writer blocks on it returns at once), and one before it left a record
        the writer saw in ``_should_wait``. flush() and close() wake it whether idle or not."""
        self._idle = True
        self._lock.release()
        try:
            self._wake.acquire(timeout=-1 if timeout is None else timeout)
        finally:
            self._lock.acquire()
            self._idle = False
            if self._woken:  # woken (the acquire took ``_wake``, or it timed out as the wake-up came): held again
                self._woken = False
                self._wake.acquire(blocking=False)

    def _should_wait(self) -> bool:
        if self._closing and self._past_close_deadline():
            return False
        if self._retry_at is not None:  # in a write-error episode: nothing to do before the next retry
            return time.monotonic() < self._retry_at
        return not self._queue and not self._closing and self._flush_target <= self._handled_synced

    def _past_close_deadline(self) -> bool:
        return self._close_deadline is not None and time.monotonic() >= self._close_deadline

    def _next_deadline(self) -> float | None:
        """Seconds until the thread has timed work (a due fsync, an aged segment, a retry), None if none."""
        now = time.monotonic()
        deadlines = []
        if self._retry_at is not None:
            deadlines.append(self._retry_at - now)
        elif self._written > self._synced:
            deadlines.append(self._last_fsync + self.fsync_interval_s - now)
        if self._fd is not None and self._retry_at is None:
            deadlines.append(self._segment_opened + self.rotate_seconds - now)
        if self._closing and self._close_deadline is not None:
            deadlines.append(self._close_deadline - now)
        return min(deadlines) if deadlines else None

    def _frame(self, record: LogRecord | DeferredRecord) -> bytes | None:
        """The framed bytes of one record; None (counted, logged) when a deferred build raises. Its companion
        form goes to ``_compacts``, in step."""
        try:
            deferred = isinstance(record, DeferredRecord)
            message = record.build() if deferred else record
            payload = message.SerializeToString()
        except Exception:  # noqa: BLE001 - one bad record must not end all logging
            self._compacts.append(None)
            with self._lock:
                self._build_errors += 1
                count = self._build_errors
            if count == 1 or count % 1000 == 0:  # the first with its traceback, then a count now and then
                log.error("log record could not be built; skipped (%d so far)", count, exc_info=count == 1)
            return None
        compact = None
        if self.companions:  # a deferred record's message is the writer's own: it is stripped in place
            try:
                compact = compact_record(message, payload, owned=deferred)
            except Exception:  # noqa: BLE001 - the record is logged all the same; its segment gets no companion
                log.exception("what-if companion entry could not be built; the segment will have no companion")
        self._compacts.append(compact)
        return FRAME_HEADER.pack(len(payload), crc32(payload)) + payload

    def _drain(self) -> None:
        """Writes every held frame, rotating segments as needed. Raises OSError with the frames kept."""
        frames = self._frames
        while frames:
            if frames[0] is None:  # a skipped record: handled, nothing to write
                frames.popleft()
                self._compacts.popleft()
                with self._lock:
                    self._handled += 1
                continue
            if self._fd is not None and time.monotonic() - self._segment_opened >= self.rotate_seconds:
                self._close_segment(sync=True)
            if self._fd is None:
                self._open_segment()
            buffer, ends, rotate = bytearray(), [], False
            for frame in frames:
                if frame is not None:
                    used = self._segment_bytes + len(buffer)
                    if used + len(frame) > self.rotate_bytes and used > HEADER_BYTES:  # holds a record already
                        rotate = True
                        break
                    buffer += frame
                ends.append(len(buffer))
                if len(buffer) >= _WRITE_CHUNK_BYTES:
                    break
            if ends:
                self._write_out(buffer, ends)
            if rotate:
                self._close_segment(sync=True)

    def _write_out(self, buffer: bytearray, ends: list[int]) -> None:
        """Writes ``buffer`` (records ending at ``ends``) and drops them from the held frames.

        On an error after part of it went out, the segment is cut back to the last complete record and only the
        records written whole are dropped: the rest stay held and are retried.
        """
        assert self._fd is not None
        view = memoryview(buffer)
        done = 0
        try:
            while done < len(buffer):
                done += _write(self._fd, view[done:])
        except OSError:
            complete = bisect.bisect_right(ends, done)
            keep = ends[complete - 1] if complete else 0
            if done > keep:
                self._cut_torn_record(self._segment_bytes + keep)
            self._account(complete, keep, ends)
            raise
        self._account(len(ends), len(buffer), ends)

    def _cut_torn_record(self, size: int) -> None:
        assert self._fd is not None
        try:
            _ftruncate(self._fd, size)
        except OSError as exc:
            # Cannot cut it: abandon the segment (readers skip its torn tail, as after a crash) and go on in a
            # new one; the records of the torn chunk stay held and are written there.
            log.error("could not truncate a torn record off %s (%s); continuing in a new segment",
                      segment_name(self._sequence - 1), _describe(exc))
            fd, self._fd = self._fd, None
            self._companion = None  # it would not match the abandoned segment's torn tail
            try:
                _fsync(fd)  # the complete records before the torn one are still worth keeping
            except OSError:
                pass
            os.close(fd)

    def _account(self, records: int, size: int, ends: list[int]) -> None:
        """Drops the first ``records`` held entries, now written (or skipped: a None between good records); ``ends``:
        where each held entry's frame ends in the written buffer (its companion entry records where it starts)."""
        skipped = 0
        companion, base = self._companion, self._segment_bytes
        for i in range(records):
            frame, compact = self._frames.popleft(), self._compacts.popleft()
            skipped += frame is None
            if frame is not None and companion is not None:
                if compact is None:
                    self._companion = companion = None
                else:
                    companion.append(entry_bytes(compact[0], compact[1], base + (ends[i - 1] if i else 0)))
        self._segment_bytes += size
        with self._lock:
            self._handled += records
            self._written += records - skipped
            self._bytes += size

    def _housekeeping(self, closing: bool) -> None:
        now = time.monotonic()
        dirty = self._written > self._synced or self._handled > self._handled_synced
        if dirty and (closing or self._flush_target > self._handled_synced
                      or now - self._last_fsync >= self.fsync_interval_s):
            self._sync()
        if self._fd is not None and now - self._segment_opened >= self.rotate_seconds:
            self._close_segment(sync=True)

    def _sync(self) -> None:
        if self._fd is not None:
            _fsync(self._fd)
        self._synced_now()

    def _synced_now(self) -> None:
        self._last_fsync = time.monotonic()
        with self._lock:
            # Earlier segments were fsynced when they were closed, so every written record is durable now.
            self._synced = self._written
            self._handled_synced = self._handled
            self._done.notify_all()

    def _open_segment(self) -> None:
        path = self.log_dir / segment_name(self._sequence)
        # O_EXCL: never reuse a name, even if another process slipped a segment in.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            self._sequence = next_sequence(self.log_dir)  # retried under the next free name
            raise
        header = file_header()
        try:
            if _write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "short write of a segment header")
            # Make the new directory entry durable, or a machine crash could lose the whole file.
            dir_fd = os.open(self.log_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            # No half-made segment is left behind; the same name is tried again on the retry.
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd = fd
        self._segment_path = path
        self._companion = [] if self.companions else None
        self._sequence += 1
        self._segment_bytes = len(header)
        self._segment_opened = time.monotonic()
        with self._lock:
            self._segments += 1
            self._bytes += len(header)

    def _close_segment(self, *, sync: bool) -> None:
        if self._fd is None:
            return
        if sync:
            _fsync(self._fd)  # on failure the segment stays open, and the fsync is retried
        fd, self._fd = self._fd, None
        os.close(fd)
        if sync:
            self._synced_now()
            self._seal_companion()

    def _seal_companion(self) -> None:
        """Write the closed segment's what-if companion; a failure is counted and logged, never fatal: the segment
        is the log, and readers read it whole when its companion is missing."""
        entries, self._companion = self._companion, None
        if entries is None or self._segment_path is None:
            return
        try:
            write_companion(self._segment_path, self._segment_bytes, entries, _write, _fsync)
            if self.columnar:  # from its entries, after it (a reader that finds the columns finds both), aside
                if self._columnar_jobs is None:
                    self._columnar_jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log-columnar")
                self._columnar_jobs.submit(self._write_columnar, self._segment_path, self._segment_bytes, entries)
        except OSError as exc:
            with self._lock:
                self._companion_errors += 1
                count = self._companion_errors
            if count == 1 or count % 100 == 0:
                log.warning("what-if companion of %s not written (%s); replay reads that segment whole "
                            "(%d so far)", self._segment_path.name, _describe(exc), count)
        else:
            with self._lock:
                self._companions += 1

    def _write_columnar(self, segment: Path, segment_bytes: int, entries: list[bytes]) -> None:
        """Convert a sealed segment's row companion entries to its columnar companion and write it, on its own
        thread: the conversion is a burst of Python (~15 µs a record), and on the writer's thread it held up the
        records queued behind it whenever serving threads kept the GIL busy. A failure is counted and logged, as for
        the row companion; readers then replay that segment record by record."""
        try:
            write_columnar(segment, columnar_frames(entries, segment, segment_bytes), _write, _fsync)
        except Exception as exc:  # noqa: BLE001 - never fatal: the segment and its row companion are the log
            with self._lock:
                self._companion_errors += 1
                count = self._companion_errors
            if count == 1 or count % 100 == 0:
                log.warning("columnar what-if companion of %s not written (%s); replay reads that segment record by "
                            "record (%d so far)", segment.name, exc, count)

    # ------------------------------------------------------------------------------ write errors

    def _on_write_error(self, exc: OSError) -> None:
        self._failures_in_row += 1
        backoff = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self._failures_in_row - 1))
        self._retry_at = time.monotonic() + backoff
        with self._lock:
            self._write_errors += 1
            held = self._submitted - self._handled
            if self._available:
                self._available = False
                self._error = exc
                self._unavailable_since = time.time()
                first = True
            else:
                first = False
        if first:
            log.error("decision log %s cannot be written (%s); holding %d records and retrying with backoff",
                      self.log_dir, _describe(exc), held)

    def _on_write_success(self) -> None:
        self._retry_at = None
        self._failures_in_row = 0
        if self._available:
            return
        with self._lock:
            since = self._unavailable_since or time.time()
            self._available = True
            self._error = None
            self._unavailable_since = None
        log.warning("decision log %s is written again after %.1f s", self.log_dir, time.time() - since)

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

    def _unavailable_message(self) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._unavailable_since or time.time()))
        return f"decision log unavailable since {since}: {_describe(self._error)}"

    def _closed_error(self) -> LogWriterClosed:
        if self._failure is not None:
            error = LogWriterClosed(f"log writer stopped on an unexpected error: {self._failure}")
            error.__cause__ = self._failure
            return error
        return LogWriterClosed("log writer is closed")

    def _close_at_exit(self) -> None:
        try:
            self.close(timeout=5.0)
        except LogWriterError:
            pass  # at interpreter exit there is nobody left to tell; the writer logged its errors


def _describe(exc: BaseException | None) -> str:
    """``ENOSPC: No space left on device`` for an OSError; the message otherwise."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return str(exc) if exc is not None else "no error"
