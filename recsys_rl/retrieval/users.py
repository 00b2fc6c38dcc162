"""The query embedding kept per user id: what a retrieval request without ``query_embedding`` searches with.

Per surface, each user's query is the exponentially decayed mean of the catalog embeddings of the items the user
engaged with (attributed outcomes with value > 0, in the order they were reported)::

    s ← decay·s + e,   w ← decay·w + 1,   query = s / w

so the newest click weighs 1, the one before it ``decay``, and so on, and the query stays on the scale of the
embeddings whatever the number of clicks. Bounded in memory: an LRU of ``user_embeddings`` users (a Rank or a
click refreshes a user; the least recently used one is dropped when a new one would exceed the size), about
``8·d + 320`` bytes a user (83 MB for 100,000 users at d = 64, tracemalloc). Not persisted: a restart starts empty (docs/operations.md says why).

A query is read once per request and copied, so a click reported while the request retrieves does not change the
query it searched with (the log records that copy: replay is exact).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class UserEmbeddings:
    """Thread-safe LRU of decayed mean embeddings by user id (one per retrieval surface)."""

    def __init__(self, capacity: int, decay: float) -> None:
        self.capacity = capacity
        self.decay = decay
        self._users: OrderedDict[str, tuple[np.ndarray, float]] = OrderedDict()  # user -> (decayed sum, weight)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    def observe(self, user_id: str, embedding: np.ndarray) -> None:
        """Adds one engaged item's embedding to ``user_id``'s query. An embedding of another dimension than the
        user's (the catalog's dimension changed) starts the user afresh: old clicks live in another space."""
        if self.capacity <= 0 or not user_id:
            return
        vector = np.asarray(embedding, dtype=np.float64)
        if vector.ndim != 1 or not vector.size or not np.isfinite(vector).all():
            return  # catalog embeddings are checked on upsert; this only guards against an empty one
        with self._lock:
            kept = self._users.pop(user_id, None)
            if kept is None or kept[0].shape != vector.shape:
                total, weight = vector.copy(), 1.0
            else:
                total, weight = kept[0] * self.decay + vector, kept[1] * self.decay + 1.0
            self._users[user_id] = (total, weight)
            while len(self._users) > self.capacity:
                self._users.popitem(last=False)

    def query(self, user_id: str) -> np.ndarray | None:
        """``user_id``'s query as float32 (a copy), or None when none is kept (never engaged, or dropped)."""
        with self._lock:
            kept = self._users.get(user_id)
            if kept is None:
                return None
            self._users.move_to_end(user_id)
            total, weight = kept
            return (total / weight).astype(np.float32)


__all__ = ["UserEmbeddings"]
