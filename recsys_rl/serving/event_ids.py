"""Event ids' random part: 128 bits from the OS's CSPRNG as 32 hex digits, drawn in batches.

``os.urandom`` releases the GIL around its system call, and on a serving process that hands the GIL to the log
writer's thread, whose record build then lands inside the Rank that asked for the bytes (measured in process: the
16-byte call took ~35 µs per Rank, most of it waiting to get the GIL back). One call for 256 ids makes that once per
256 Ranks; every id is still 16 fresh bytes of the same source, never reused (a lock hands each slice out once, and a
forked child starts with an empty batch rather than its parent's).
"""

from __future__ import annotations

import os
import threading

_BATCH = 256  # ids per os.urandom call
_lock = threading.Lock()
_pool = b""
_offset = 0


def random_hex() -> str:
    """16 random bytes as 32 lowercase hex digits (the format ``uuid4().hex`` had)."""
    global _pool, _offset
    with _lock:
        if _offset >= len(_pool):
            _pool, _offset = os.urandom(16 * _BATCH), 0
        start = _offset
        _offset = start + 16
        return _pool[start:start + 16].hex()


def _forget() -> None:  # a forked child must not hand out the ids its parent has not used yet
    global _pool, _offset, _lock
    _pool, _offset, _lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget)
