"""Running statistics of a surface's shadow decisions, for ``rollout show`` (how the learned policy would have
done beside the served baseline, before a canary).

Per shadow decision: whether its top item is the baseline's, overlap@k = |shadow slate ∩ served slate| / k, whether
the learned policy itself fell back, and the time it added to Rank. Counts are plain sums since the server started
(O(1) memory); the latency median is over the last ``LATENCY_WINDOW`` decisions (a fixed-size ring: bounded memory,
and it follows the current model rather than the whole history), kept as a log-spaced histogram of that window
(median within ±2.5%).

Everything is a sum, so the statistics of several processes serving one data dir merge exactly (``ShadowSums``:
``serve --workers N`` publishes each worker's sums and admin reads add them up, ``recsys_rl.rollout.fleet``).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from recsys_rl.rollout.guardrail import LatencyHistogram
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


@dataclass(frozen=True)
class ShadowSums:
    """The sums behind ``ShadowStats``: they add up over processes (``merge``), the rates are ratios of the sums."""

    decisions: int = 0
    top1_matches: int = 0
    overlap_sum: float = 0.0
    fallbacks: int = 0
    latency_bins: Mapping[int, int] = field(default_factory=dict)  # LatencyHistogram bins of each latency window

    @classmethod
    def merge(cls, parts: Iterable[ShadowSums]) -> ShadowSums:
        decisions = top1 = fallbacks = 0
        overlap = 0.0
        bins: dict[int, int] = {}
        for part in parts:
            decisions += part.decisions
            top1 += part.top1_matches
            overlap += part.overlap_sum
            fallbacks += part.fallbacks
            for index, n in part.latency_bins.items():
                bins[index] = bins.get(index, 0) + n
        return cls(decisions, top1, overlap, fallbacks, bins)

    def stats(self) -> ShadowStats:
        n = self.decisions
        if n == 0:
            return ShadowStats()
        p50 = LatencyHistogram.from_sparse(dict(self.latency_bins)).median()
        return ShadowStats(decisions=n, top1_match=self.top1_matches / n, overlap_at_k=self.overlap_sum / n,
                           added_latency_p50_ms=p50 if math.isfinite(p50) else 0.0,
                           fallback_rate=self.fallbacks / n)

    def to_dict(self) -> dict[str, object]:
        return {"decisions": self.decisions, "top1_matches": self.top1_matches, "overlap_sum": self.overlap_sum,
                "fallbacks": self.fallbacks, "latency_bins": {str(k): v for k, v in sorted(self.latency_bins.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ShadowSums:
        """Raises ValueError/TypeError/KeyError on a malformed dict (the reader skips such a file)."""
        bins = data["latency_bins"]
        if not isinstance(bins, Mapping):
            raise ValueError("latency_bins: not an object")
        LatencyHistogram.from_sparse(bins)  # validates the indices
        return cls(int(data["decisions"]), int(data["top1_matches"]),  # type: ignore[call-overload]
                   float(data["overlap_sum"]), int(data["fallbacks"]),  # type: ignore[arg-type, call-overload]
                   {int(k): int(v) for k, v in bins.items()})


class ShadowTracker:
    """Accumulates shadow decisions; thread-safe (Rank runs on a thread pool), O(1) per record."""

    def __init__(self, latency_window: int = LATENCY_WINDOW) -> None:
        self._lock = threading.Lock()
        self._decisions = 0
        self._top1 = 0
        self._overlap = 0.0
        self._fallbacks = 0
        self._window: deque[int] = deque(maxlen=latency_window)  # latency bins of the last decisions, oldest first
        self._latency = LatencyHistogram()  # the histogram of exactly the bins in the window

    def record(self, served: Decision, shadow: Decision, added_latency_us: int) -> None:
        served_items = [slot.item_id for slot in served.slots]
        shadow_items = [slot.item_id for slot in shadow.slots]
        k = len(served_items)
        top1 = bool(k) and bool(shadow_items) and shadow_items[0] == served_items[0]
        overlap = len(set(served_items) & set(shadow_items)) / k if k else 0.0
        latency_bin = LatencyHistogram.bin_of(added_latency_us / 1000.0)
        with self._lock:
            self._decisions += 1
            self._top1 += top1
            self._overlap += overlap
            self._fallbacks += bool(shadow.fallback_reason)
            if len(self._window) == self._window.maxlen:
                self._latency.add_bin(self._window[0], -1)  # the oldest leaves the window (append drops it)
            self._window.append(latency_bin)
            self._latency.add_bin(latency_bin)

    def sums(self) -> ShadowSums:
        with self._lock:
            return ShadowSums(self._decisions, self._top1, self._overlap, self._fallbacks, self._latency.sparse())

    def snapshot(self) -> ShadowStats:
        return self.sums().stats()


__all__ = ["LATENCY_WINDOW", "ShadowStats", "ShadowSums", "ShadowTracker"]
