"""Running statistics of a surface's shadow decisions, for ``rollout show`` (how the learned policy would have
done beside the served baseline, before a canary).

Per shadow decision: whether its top item is the baseline's, overlap@k = |shadow slate ∩ served slate| / k, whether
the learned policy itself fell back, and the time it added to Rank. Counts are plain sums since the server started
(O(1) memory); the latency median is over the last ``LATENCY_WINDOW`` decisions (a fixed-size ring: bounded memory,
and it follows the current model rather than the whole history).
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass

from recsys_rl.serving.decision import Decision

LATENCY_WINDOW = 4096


@dataclass(frozen=True)
class ShadowStats:
    """A snapshot (field meanings as in policy_admin_service.proto ShadowStats); rates are 0 with no decisions."""

    decisions: int = 0
    top1_match: float = 0.0
    overlap_at_k: float = 0.0
    added_latency_p50_ms: float = 0.0
    fallback_rate: float = 0.0


class ShadowTracker:
    """Accumulates shadow decisions; thread-safe (Rank runs on a thread pool), O(1) per record."""

    def __init__(self, latency_window: int = LATENCY_WINDOW) -> None:
        self._lock = threading.Lock()
        self._decisions = 0
        self._top1 = 0
        self._overlap = 0.0
        self._fallbacks = 0
        self._latency_us: deque[int] = deque(maxlen=latency_window)

    def record(self, served: Decision, shadow: Decision, added_latency_us: int) -> None:
        served_items = [slot.item_id for slot in served.slots]
        shadow_items = [slot.item_id for slot in shadow.slots]
        k = len(served_items)
        top1 = bool(k) and bool(shadow_items) and shadow_items[0] == served_items[0]
        overlap = len(set(served_items) & set(shadow_items)) / k if k else 0.0
        with self._lock:
            self._decisions += 1
            self._top1 += top1
            self._overlap += overlap
            self._fallbacks += bool(shadow.fallback_reason)
            self._latency_us.append(added_latency_us)

    def snapshot(self) -> ShadowStats:
        with self._lock:
            n = self._decisions
            if n == 0:
                return ShadowStats()
            return ShadowStats(decisions=n, top1_match=self._top1 / n, overlap_at_k=self._overlap / n,
                               added_latency_p50_ms=statistics.median(self._latency_us) / 1000.0,
                               fallback_rate=self._fallbacks / n)


__all__ = ["LATENCY_WINDOW", "ShadowStats", "ShadowTracker"]
