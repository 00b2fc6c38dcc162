"""faiss indexes over a catalog version's embeddings: top-K by inner product, built off the request path.

One :class:`ItemIndex` per (catalog version, build parameters): ``exact`` is ``IndexFlatIP``; ``ivf`` is
``IndexIVFFlat`` over an inner-product quantizer, k-means trained on a seeded sample; ``hnsw`` is ``IndexHNSWFlat``
with the inner-product metric. Search-time parameters (``nprobe``, ``ef_search``) are passed per search, so one index
serves every surface that shares its build parameters. A surface with a ``recall_target`` searches with the value
tuned for it (:mod:`recsys_rl.retrieval.tuning`), measured on the build thread before the index is swapped in and
kept with the index (``ItemIndex.tunings``), so every search and every logged decision of that index use one value.

Determinism: faiss runs single-threaded in this process (``omp_set_num_threads(1)``: a serving worker owns one core,
and k-means and HNSW insertion order depend on the thread schedule otherwise), the IVF training sample and k-means
seed are fixed, and ties are broken by faiss's scan order (catalog id order). The same catalog version and
parameters therefore give the same index and the same results for the same query, in every process.

:class:`RetrievalIndexes` keeps the newest built index per build key. ``ensure`` starts a build when the catalog
version in force changed (one background thread per key; the newest version wins), and the index is swapped in with
one attribute write when it is complete: a request sees the old index or the new one, never a half-built one. A
request retrieves from the index it reads once, and its candidates are completed from that index's own catalog
version, so features, embeddings and retrieval always come from one version (logged in the decision event).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from recsys_rl.catalog.items import CatalogVersion
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.retrieval.config import RetrievalConfig
from recsys_rl.retrieval.tuning import Tuning, tune

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)


def _faiss():  # noqa: ANN202 - the faiss module
    """faiss, imported when a surface first builds or searches an index (not by every CLI command: its loader logs
    INFO lines about CPU features, which would break the one-line errors of unrelated commands), single-threaded:
    one search per Rank thread, and workers already use every core."""
    import faiss

    if not getattr(_faiss, "configured", False):
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        faiss.omp_set_num_threads(1)
        _faiss.configured = True  # type: ignore[attr-defined]
    return faiss

TRAIN_SEED = 1234
TRAIN_POINTS_PER_LIST = 64  # k-means sample: 64 points per list (faiss warns below 39)


@dataclass(eq=False)
class ItemIndex:
    """An immutable index of one catalog version. ``ids[i]``: the item at faiss id i (catalog id order)."""

    catalog: CatalogVersion | None  # what candidates are completed from (None: built from arrays, in tests)
    version: str  # the catalog version it indexes
    kind: str  # exact | ivf | hnsw (the one built: small catalogs get exact)
    ids: list[str]
    dimension: int
    index: faiss.Index
    nlist: int = 0
    hnsw_m: int = 0
    build_seconds: float = 0.0
    positions: dict[str, int] = field(default_factory=dict, repr=False)
    # RetrievalConfig.tuning_key -> the tuned search parameter; filled before the index serves, read-only after.
    tunings: dict[tuple[float, int, int, int, int, int], Tuning] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.positions:
            self.positions = {item_id: i for i, item_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def index_version(self) -> str:
        """Names the index: its catalog version and build parameters (logged with every retrieval)."""
        built = {"exact": "flatip", "ivf": f"ivfflat{self.nlist}", "hnsw": f"hnswflat{self.hnsw_m}"}
        return f"{self.version}/{built[self.kind]}"

    def tuning_for(self, config: RetrievalConfig) -> Tuning | None:
        """The parameter tuned for ``config``'s recall target on this index (None: tuning off, or exact)."""
        return self.tunings.get(config.tuning_key) if config.recall_target > 0.0 else None

    def search(self, queries: np.ndarray, k: int, config: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
        """(scores, faiss ids) of the top ``k`` by inner product for each row of ``queries`` (float32, (q, d));
        ids are -1 past the end when fewer than ``k`` are found (an IVF probe can find fewer than the catalog)."""
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self.ids))
        used = self.search_params(config, k)
        if self.kind == "ivf":
            params: faiss.SearchParameters | None = faiss.SearchParametersIVF(nprobe=used["nprobe"])
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=used["ef_search"])
        else:
            params = None
        return self.index.search(queries, k, params=params)

    def search_params(self, config: RetrievalConfig, k: int) -> dict[str, int]:
        """The search-time parameters a top-``k`` search with ``config`` uses (0: not applicable to this kind): the
        tuned value when the surface has a recall target, else the configured one. What the decision log records."""
        tuned = self.tuning_for(config)
        nprobe = tuned.value if tuned is not None else config.nprobe
        ef_search = tuned.value if tuned is not None else config.ef_search
        return {"nlist": self.nlist, "nprobe": min(nprobe, self.nlist) if self.kind == "ivf" else 0,
                "ef_search": max(ef_search, min(k, len(self.ids))) if self.kind == "hnsw" else 0}


def build_index(ids: list[str], vectors: np.ndarray, config: RetrievalConfig, *, version: str,
                catalog: CatalogVersion | None = None) -> ItemIndex:
    """Builds the index ``config`` asks for over ``vectors`` (float32, (n, d), row i = ``ids[i]``)."""
    faiss = _faiss()
    started = time.perf_counter()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    kind = config.kind_for(n)
    nlist = 0
    if kind == "exact":
        index: faiss.Index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = min(config.nlist, max(1, n // 39))  # faiss needs >= 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = TRAIN_SEED
        sample = min(n, TRAIN_POINTS_PER_LIST * nlist)
        rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size=sample, replace=False))
        index.train(vectors[rows])  # faiss's wrapper keeps `quantizer` alive with the index
    else:
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    return ItemIndex(catalog, version, kind, list(ids), d, index, nlist, config.hnsw_m if kind == "hnsw" else 0,
                     time.perf_counter() - started)


def catalog_vectors(catalog: CatalogVersion) -> tuple[list[str], np.ndarray]:
    """The catalog's ids (sorted: a deterministic order) and their embeddings as one float32 matrix."""
    ids = sorted(catalog.items)
    out = np.empty((len(ids), catalog.dimension), dtype=np.float32)
    parse = catalog_pb.CatalogItem.FromString
    items = catalog.items
    for i, item_id in enumerate(ids):
        out[i] = parse(items[item_id]).embedding
    return ids, out


class RetrievalIndexes:
    """The newest built index per build key (:attr:`RetrievalConfig.build_key`); builds in the background."""

    def __init__(self) -> None:
        self._built: dict[tuple[str, int, int, int], ItemIndex] = {}
        self._building: dict[tuple[str, int, int, int], str] = {}  # key -> version being built
        self._failed: set[tuple[tuple[str, int, int, int], str]] = set()  # not retried on every request
        self._lock = threading.Lock()

    def get(self, config: RetrievalConfig) -> ItemIndex | None:
        return self._built.get(config.build_key)  # one dict read: an index is swapped in whole

    def ensure(self, catalog: CatalogVersion | None, configs: Iterable[RetrievalConfig], *,
               wait: bool = False) -> None:
        """Builds an index of ``catalog`` for every distinct build key of ``configs`` that lacks one (``wait``:
        here and now, e.g. at start; otherwise on a background thread, the old index serving meanwhile)."""
        if catalog is None or not catalog.items or catalog.dimension <= 0:
            return
        groups: dict[tuple[str, int, int, int], list[RetrievalConfig]] = {}
        for config in configs:  # one index per build key, tuned for every surface sharing it
            groups.setdefault(config.build_key, []).append(config)
        todo: list[list[RetrievalConfig]] = []
        with self._lock:
            for key, group in groups.items():
                built = self._built.get(key)
                if ((built is not None and built.version == catalog.version)
                        or self._building.get(key) == catalog.version or (key, catalog.version) in self._failed):
                    continue
                self._building[key] = catalog.version
                todo.append(group)
        if not todo:
            return
        if wait:
            self._build(catalog, todo)
        else:
            threading.Thread(target=self._build, args=(catalog, todo), name="retrieval-index-build",
                             daemon=True).start()

    def _build(self, catalog: CatalogVersion, groups: list[list[RetrievalConfig]]) -> None:
        configs = [group[0] for group in groups]
        try:
            ids, vectors = catalog_vectors(catalog)
            for group in groups:
                config = group[0]
                index = build_index(ids, vectors, config, version=catalog.version, catalog=catalog)
                for tuned in {c.tuning_key: c for c in group if c.recall_target > 0.0}.values():
                    tuning = tune(index, vectors, tuned)  # before the index serves: no search sees it untuned
                    if tuning is not None:
                        index.tunings[tuned.tuning_key] = tuning
                with self._lock:
                    current = self._built.get(config.build_key)
                    if current is None or current.version < catalog.version:  # names sort by sequence
                        self._built[config.build_key] = index
                    if self._building.get(config.build_key) == catalog.version:
                        del self._building[config.build_key]
                log.info("retrieval index %s built: %d items, %.2f s", index.index_version, len(index),
                         index.build_seconds)
        except Exception:  # noqa: BLE001 - a failed build leaves the previous index serving; logged, retried later
            log.exception("retrieval index of catalog version %s failed to build", catalog.version)
            with self._lock:
                for config in configs:
                    if self._building.get(config.build_key) == catalog.version:
                        del self._building[config.build_key]
                        self._failed.add((config.build_key, catalog.version))


__all__ = ["ItemIndex", "RetrievalIndexes", "Tuning", "build_index", "catalog_vectors"]
