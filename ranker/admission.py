"""Admission under overload: how long a request waited inside this process before its handler ran.

gRPC Python's sync server queues every RPC in its ``ThreadPoolExecutor`` (``grpc._server._handle_unary_unary`` calls
``thread_pool.submit`` from the polling thread once the call arrives); the handler thread then receives the request
message through that same polling thread. Both waits grow under load, with VW holding the GIL, and neither is
visible to a handler whose decision budget starts when it runs. :class:`StampingExecutor` stamps the
``time.perf_counter()`` instant of ``submit`` and hands it to the work item's thread (a thread-local: gRPC runs the
item inside a copied ``contextvars`` context, so a context variable set around it would not be seen), where
:func:`queued_since` reads it: the request's wait is "now − queued_since" when its handler starts.

What a late request gets is decided by the caller of :func:`queued_since`: the servicer refuses a request that
waited past the hard limit or past its caller's deadline (RESOURCE_EXHAUSTED, nothing logged), and
``DecisionService.rank`` serves the baseline at once to one that waited past its surface's decision budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

T = TypeVar("T")

_stamp = threading.local()


def queued_since() -> float | None:
    """The ``perf_counter()`` instant the running work item was submitted (None outside a StampingExecutor)."""
    return getattr(_stamp, "enqueued", None)


class StampingExecutor(futures.ThreadPoolExecutor):
    """A ThreadPoolExecutor whose work items know when they were submitted; counts what waits for a thread.

    ``queue_depth`` (items submitted but not started) is a gauge the metrics can read.
    """

    def __init__(self, max_workers: int, *, thread_name_prefix: str = "rpc") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._depth_lock = threading.Lock()
        self._queue_depth = 0

    @property
    def queue_depth(self) -> int:
        return self._queue_depth

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> futures.Future[T]:
        enqueued = time.perf_counter()
        with self._depth_lock:
            self._queue_depth += 1
        try:
            return super().submit(self._run_stamped, enqueued, fn, *args, **kwargs)
        except BaseException:
            with self._depth_lock:
                self._queue_depth -= 1
            raise

    def _run_stamped(self, enqueued: float, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        with self._depth_lock:
            self._queue_depth -= 1
        _stamp.enqueued = enqueued
        try:
            return fn(*args, **kwargs)
        finally:
            _stamp.enqueued = None
