"""A surface's retrieval parameters (TOML ``[surfaces.NAME.retrieval]``).

Example::

    [surfaces.home_feed.retrieval]
    index = "ivf"          # exact (IndexFlatIP) | ivf (IndexIVFFlat) | hnsw (IndexHNSWFlat, inner product)
    nlist = 1024           # ivf: inverted lists (trained with a fixed seed)
    nprobe = 32            # ivf: lists searched per query
    hnsw_m = 32            # hnsw: links per node
    ef_search = 128        # hnsw: candidate list size while searching
    size = 200             # K when a request asks for retrieval without a size
    outside_share = 0.0    # share of the exploration cap drawn uniformly from outside the retrieved set
    user_embeddings = 100000  # users whose query embedding is kept (LRU); 0: the host always sends the query
    user_decay = 0.8       # weight of the older clicks in the kept decayed mean, per new click (0: last click only)
    recall_target = 0.95   # tune nprobe / ef_search to reach this recall@size vs exact search (0: off, as set)
    recall_queries = 200   # tuning: catalog vectors (seeded sample) used as queries
    ef_search_max = 4096   # tuning: the largest ef_search tried (nprobe stops at nlist: IVF is exact there)

A catalog smaller than ``exact_below`` items always gets the exact index: an approximate one buys nothing there,
and IVF needs ~39 training points per list.

With ``recall_target`` > 0 the configured ``nprobe`` / ``ef_search`` are where tuning starts (a floor): after each
build, before the index serves, the smallest value reaching the target recall@``size`` is measured
(:mod:`recsys_rl.retrieval.tuning`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INDEX_KINDS = ("exact", "ivf", "hnsw")


@dataclass(frozen=True)
class RetrievalConfig:
    index: str = "exact"
    nlist: int = 1024
    nprobe: int = 32
    hnsw_m: int = 32
    ef_search: int = 128
    size: int = 200
    outside_share: float = 0.0  # off by default: exploration stays within the candidates, as without retrieval
    exact_below: int = 50_000
    # The query kept per user id (recsys_rl/retrieval/users.py): an LRU of this many users, per surface.
    user_embeddings: int = 100_000
    user_decay: float = 0.8
    # Tuning to a recall target (recsys_rl/retrieval/tuning.py): off at 0.0, the fixed nprobe / ef_search serve.
    recall_target: float = 0.0
    recall_queries: int = 200
    ef_search_max: int = 4096

    def __post_init__(self) -> None:
        if self.index not in INDEX_KINDS:
            raise ValueError(f"retrieval.index: {self.index!r} is not one of {', '.join(INDEX_KINDS)}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_search", "size", "recall_queries", "ef_search_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"retrieval.{name}: must be a positive integer, got {value!r}")
        if not isinstance(self.exact_below, int) or self.exact_below < 0:
            raise ValueError(f"retrieval.exact_below: must be a non-negative integer, got {self.exact_below!r}")
        if not (isinstance(self.outside_share, int | float) and math.isfinite(self.outside_share)
                and 0.0 <= self.outside_share < 1.0):
            raise ValueError(f"retrieval.outside_share: must be in [0, 1), got {self.outside_share!r}")
        if not isinstance(self.user_embeddings, int) or isinstance(self.user_embeddings, bool) \
                or self.user_embeddings < 0:
            raise ValueError(f"retrieval.user_embeddings: must be a non-negative integer, got {self.user_embeddings!r}")
        if not (isinstance(self.user_decay, int | float) and not isinstance(self.user_decay, bool)
                and math.isfinite(self.user_decay) and 0.0 <= self.user_decay < 1.0):
            raise ValueError(f"retrieval.user_decay: must be in [0, 1), got {self.user_decay!r}")
        if not (isinstance(self.recall_target, int | float) and not isinstance(self.recall_target, bool)
                and math.isfinite(self.recall_target) and 0.0 <= self.recall_target <= 1.0):
            raise ValueError(f"retrieval.recall_target: must be in [0, 1] (0: off), got {self.recall_target!r}")
        if self.ef_search_max < self.ef_search:
            raise ValueError(f"retrieval.ef_search_max: must be at least ef_search ({self.ef_search}), "
                             f"got {self.ef_search_max}")

    @property
    def tuning_key(self) -> tuple[float, int, int, int, int, int]:
        """What a tuned search parameter depends on, besides the index: (target, K, queries, floors, cap)."""
        return (float(self.recall_target), self.size, self.recall_queries, self.nprobe, self.ef_search,
                self.ef_search_max)

    def kind_for(self, n_items: int) -> str:
        """The index kind a catalog of ``n_items`` gets: the configured one, exact below ``exact_below``."""
        return "exact" if n_items < self.exact_below else self.index

    @property
    def build_key(self) -> tuple[str, int, int, int]:
        """What an index's build depends on (nprobe and ef_search are search-time: one index serves them all)."""
        return self.index, self.nlist, self.hnsw_m, self.exact_below


__all__ = ["INDEX_KINDS", "RetrievalConfig"]
