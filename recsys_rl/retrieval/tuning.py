"""Search parameters tuned to a recall target: the smallest ``nprobe`` / ``ef_search`` reaching recall@K.

A surface with ``recall_target = r`` (``[surfaces.NAME.retrieval]``) gets its search parameter measured on every
index built for it, on the build thread, before the index serves (:class:`recsys_rl.retrieval.index.RetrievalIndexes`):

1. queries: ``recall_queries`` of the catalog's own vectors, a seeded sample (:data:`TUNE_SEED`; same catalog
   version → same sample in every process); the truth is their exact top-K by inner product (``faiss.knn``:
   O(queries × items), ~1 s at 200 × 1M × 64);
2. recall@K of a value: ``|approx top-K ∩ exact top-K| / K``, mean over the queries (``faiss.IntersectionCriterion``);
3. search: start at the configured value (a floor: tuning only raises it), double until the target is met or the
   cap is reached (IVF: ``nlist``, where the search is exact; HNSW: ``ef_search_max``), then bisect between the last
   value that missed and the first that met it. Recall grows with either parameter (for IVF strictly: a larger
   ``nprobe`` searches a superset of lists), so the result is the smallest value meeting the target on the sample.
   A target the cap cannot reach keeps the cap and reports ``met = False`` (logged as a warning, and in the metric).

Why not ``faiss.ParameterSpace.explore`` / ``OperatingPoints``: they keep the Pareto frontier of (recall, measured
search time), so the value picked depends on timings — two workers building the same catalog version could serve
different parameters, and the log must name one deterministic value per index; they also try powers of two only
and explore every combination rather than stopping at the smallest value meeting a target. Measuring recall is
faiss's own criterion.

The sample queries are catalog items, not real user queries: fresh queries drawn like the items reach about the same
recall (tests/recsys_rl/retrieval/test_tuning.py states the tolerance), queries far from the items may not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recsys_rl.retrieval.config import RetrievalConfig

if TYPE_CHECKING:
    from recsys_rl.retrieval.index import ItemIndex

log = logging.getLogger(__name__)

TUNE_SEED = 4321


@dataclass(frozen=True)
class Tuning:
    """The search parameter chosen for one (index, surface tuning key), and how it was measured."""

    target: float
    k: int  # recall@k (the surface's size, at most the catalog)
    parameter: str  # nprobe | ef_search
    value: int  # what searches use
    recall: float  # measured at ``value`` on the sample
    met: bool  # recall >= target (False: capped at ``cap``)
    cap: int
    queries: int
    tried: tuple[tuple[int, float], ...]  # (value, recall) in the order measured
    seconds: float

    def describe(self) -> str:
        status = "met" if self.met else f"NOT met (capped at {self.parameter} {self.cap})"
        return (f"{self.parameter} {self.value}: recall@{self.k} {self.recall:.3f} on {self.queries} catalog "
                f"queries, target {self.target:.3f} {status}; {len(self.tried)} values tried in {self.seconds:.1f} s")


def tune(index: ItemIndex, vectors: np.ndarray, config: RetrievalConfig) -> Tuning | None:
    """The smallest search parameter of ``index`` (over ``vectors``, row i = faiss id i) reaching
    ``config.recall_target``; None for an exact index (recall 1 by construction) or with tuning off."""
    if config.recall_target <= 0.0 or index.kind == "exact":
        return None
    import faiss  # recsys_rl.retrieval.index configured it (single-threaded) when it built ``index``

    started = time.perf_counter()
    n = len(index)
    k = min(config.size, n)
    rows = np.sort(np.random.default_rng(TUNE_SEED).choice(n, size=min(config.recall_queries, n), replace=False))
    queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    truth_d, truth_i = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    criterion = faiss.IntersectionCriterion(len(rows), k)
    criterion.set_groundtruth(truth_d, truth_i)

    if index.kind == "ivf":
        parameter, floor, cap = "nprobe", min(config.nprobe, index.nlist), index.nlist

        def params(value: int) -> object:
            return faiss.SearchParametersIVF(nprobe=value)
    else:
        parameter, floor, cap = "ef_search", max(config.ef_search, k), max(config.ef_search_max, k)

        def params(value: int) -> object:
            return faiss.SearchParametersHNSW(efSearch=value)

    tried: list[tuple[int, float]] = []

    def recall(value: int) -> float:
        distances, ids = index.index.search(queries, k, params=params(value))
        found = float(criterion.evaluate(faiss.swig_ptr(distances), faiss.swig_ptr(ids)))
        tried.append((value, found))
        return found

    value, found = _smallest(floor, cap, config.recall_target, recall)
    tuning = Tuning(float(config.recall_target), k, parameter, value, found, found >= config.recall_target, cap,
                    len(rows), tuple(tried), time.perf_counter() - started)
    (log.info if tuning.met else log.warning)("retrieval index %s tuned: %s", index.index_version, tuning.describe())
    return tuning


def _smallest(floor: int, cap: int, target: float, recall: Callable[[int], float]) -> tuple[int, float]:
    """(value, its recall): the smallest value in [floor, cap] whose recall meets ``target`` (recall assumed
    non-decreasing), or (cap, recall at cap) when none does. Doubling, then bisection: O(log cap) measurements."""
    low, found = floor, recall(floor)
    if found >= target:
        return floor, found
    high = low
    while high < cap:
        low, high = high, min(2 * high, cap)
        found = recall(high)
        if found >= target:
            break
    else:
        return high, found  # the cap misses the target: keep it (the best there is) and say so
    best = found
    while high - low > 1:  # recall(low) < target <= recall(high)
        mid = (low + high) // 2
        at_mid = recall(mid)
        if at_mid >= target:
            high, best = mid, at_mid
        else:
            low = mid
    return high, best


__all__ = ["TUNE_SEED", "Tuning", "tune"]
