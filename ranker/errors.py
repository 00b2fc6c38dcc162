"""Maps domain exceptions to gRPC status codes, so no foreseeable failure surfaces as UNKNOWN."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from logging_schema.writer import LogQueueFull, LogUnavailable, LogWriterClosed
from recsys_rl.errors import (Aborted, InvalidInput, NotFound, NotReady, Overloaded, PreconditionFailed,
                              Unauthenticated)

log = logging.getLogger(__name__)

STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (Aborted, grpc.StatusCode.ABORTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    # logging_schema imports nothing of ours, so its errors are mapped here, not by inheritance.
    (LogWriterClosed, grpc.StatusCode.UNAVAILABLE),
    (LogUnavailable, grpc.StatusCode.UNAVAILABLE),
    (LogQueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
)

Handler = TypeVar("Handler", bound=Callable[..., Any])

# Status details travel percent-encoded in the grpc-message trailer (x3 for every non-ASCII byte), and a client
# drops a stream whose trailers pass 8 KiB (soft limit: sometimes) or 16 KiB (hard), reporting RESOURCE_EXHAUSTED
# "received metadata size exceeds ... limit" instead of the status. Messages echo caller input (an unknown
# event_id, a duplicate item_id), so they are cut to a UTF-8 size that stays under the soft limit once encoded.
MAX_DETAILS_BYTES = 1_500


def bounded_details(message: str) -> str:
    """``message`` cut to MAX_DETAILS_BYTES of UTF-8 (on a character boundary); its start, the field path, stays."""
    encoded = message.encode("utf-8")
    if len(encoded) <= MAX_DETAILS_BYTES:
        return message
    kept = encoded[:MAX_DETAILS_BYTES].decode("utf-8", errors="ignore")
    return f"{kept}… (cut from {len(encoded):,} bytes)"


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def map_errors(handler: Handler) -> Handler:
    """Decorates a servicer method: domain exceptions abort the RPC with their status code and message."""

    @functools.wraps(handler)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every exception becomes a status; INTERNAL is logged
            code = status_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("unexpected error in %s", handler.__name__)
            context.abort(code, bounded_details(str(exc)))

    return wrapper  # type: ignore[return-value]
