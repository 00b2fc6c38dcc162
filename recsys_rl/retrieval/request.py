"""A RankRequest that asks for retrieval, turned into an ordinary one: host-sent candidates, then retrieved ones.

Rules (each error names the field, INVALID_ARGUMENT):

* ``retrieval.size``: K; 0 means the surface's ``[retrieval] size`` (proto3 cannot tell 0 from unset); negative, or
  more than the surface's ``max_candidates`` together with the host-sent candidates, is refused;
* ``retrieval.query_embedding``: of the catalog's dimension, finite; empty means the query the service keeps for
  ``user_id`` (:mod:`recsys_rl.retrieval.users`): INVALID_ARGUMENT without a ``user_id`` (or on a surface with
  ``user_embeddings = 0``), FAILED_PRECONDITION naming ``retrieval.query_embedding`` when none is kept for that user
  yet (the host sends its own cold-start query then);
* ``slate_size``: at most the host-sent and retrieved candidates together.

Merge: the host's candidates first, in their order and as sent; then the retrieved items by descending inner
product, each sent by id only (features and embedding come from the index's catalog version) with its inner product
as ``baseline_score`` (so a baseline orders retrieved items by it); an item the host also sent is not repeated (the
host's copy stays where the host put it). With ``outside_share`` > 0 the items planned by
:func:`recsys_rl.retrieval.outside.plan_outside` follow, with a baseline below every other candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recsys_rl.errors import InvalidInput, PreconditionFailed
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.retrieval.config import RetrievalConfig
from recsys_rl.retrieval.index import ItemIndex
from recsys_rl.retrieval.outside import OutsidePlan, plan_outside
from recsys_rl.retrieval.users import UserEmbeddings


@dataclass(frozen=True, eq=False)
class RetrievalResult:
    """How one request's candidates were retrieved (logged as ``DecisionEvent.retrieval``)."""

    index: ItemIndex
    config: RetrievalConfig
    size: int
    query: np.ndarray
    host_candidates: int
    retrieved_candidates: int
    plan: OutsidePlan | None  # None: no exploration outside the candidates for this request
    query_source: str = "request"  # request | user (the query kept for the request's user_id)

    def fill(self, record: object) -> None:
        """Writes the record's fields (a DecisionEvent's ``retrieval`` or its WireRecord view)."""
        index = self.index
        record.index_version = index.index_version
        record.catalog_version = index.version
        record.index_type = index.kind
        record.size = self.size
        params = index.search_params(self.config, self.size)
        record.nlist, record.nprobe, record.ef_search = params["nlist"], params["nprobe"], params["ef_search"]
        record.host_candidates = self.host_candidates
        record.retrieved_candidates = self.retrieved_candidates
        plan = self.plan
        record.outside_candidates = 0 if plan is None else len(plan.item_ids)
        record.outside_share = 0.0 if plan is None else plan.share
        record.outside_pool = 0 if plan is None else plan.pool
        record.query_embedding.extend(self.query.tolist())
        record.query_source = self.query_source
        target = self.config.recall_target
        if target > 0.0:  # what the index measured at the parameter logged above (exact: 1 by construction)
            tuned = index.tuning_for(self.config)
            record.recall_target = target
            record.measured_recall = 1.0 if index.kind == "exact" else tuned.recall if tuned is not None else 0.0


def check_retrieval(request: pb.RankRequest, index: ItemIndex, config: RetrievalConfig, *, max_candidates: int,
                    users: UserEmbeddings | None = None) -> tuple[int, np.ndarray, str]:
    """(K, the query as a (1, d) float32 array, where it came from: "request" or "user"); raises InvalidInput
    naming the field, or PreconditionFailed when the request relies on a user query the service does not keep."""
    retrieval = request.retrieval
    size = retrieval.size or config.size
    if size < 0:
        raise InvalidInput("retrieval.size", f"must be positive (0: the surface's {config.size}), got {size}")
    if size + len(request.candidates) > max_candidates:
        raise InvalidInput("retrieval.size", f"{size} retrieved with {len(request.candidates)} host-sent candidates "
                                             f"is more than the limit of {max_candidates}")
    query = retrieval.query_embedding
    if not query:
        return size, _kept_query(request, index, users), "user"
    if len(query) != index.dimension:
        raise InvalidInput("retrieval.query_embedding", f"has {len(query)} values; the catalog's dimension is "
                                                        f"{index.dimension}")
    values = np.asarray(query, dtype=np.float32)
    if not np.isfinite(values).all():
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise InvalidInput(f"retrieval.query_embedding[{i}]", f"must be finite, got {values[i]}")
    return size, values.reshape(1, -1), "request"


def _kept_query(request: pb.RankRequest, index: ItemIndex, users: UserEmbeddings | None) -> np.ndarray:
    """The query kept for the request's user, as a (1, d) float32 array."""
    if users is None or users.capacity <= 0:
        raise InvalidInput("retrieval.query_embedding", "must not be empty (send the query embedding; this surface "
                                                        "keeps no query per user: retrieval.user_embeddings = 0)")
    if not request.user_id:
        raise InvalidInput("retrieval.query_embedding", "must not be empty without a user_id (send the query "
                                                        "embedding, or the user_id whose query the service keeps)")
    kept = users.query(request.user_id)
    if kept is None or kept.shape[0] != index.dimension:  # another dimension: kept before the catalog changed
        raise PreconditionFailed(f"retrieval.query_embedding: no query is kept for user_id {request.user_id!r} "
                                 f"on surface {request.surface!r} yet (no engagement with a catalog item reported "
                                 f"to this server); send retrieval.query_embedding")
    return kept.reshape(1, -1)


def retrieve(request: pb.RankRequest, index: ItemIndex, config: RetrievalConfig, *, max_candidates: int,
             cap: float, draw_key: int, explore_outside: bool,
             users: UserEmbeddings | None = None) -> tuple[pb.RankRequest, RetrievalResult]:
    """The request with the retrieved (and outside-planned) candidates appended, and how they were found."""
    size, query, source = check_retrieval(request, index, config, max_candidates=max_candidates, users=users)
    scores, found = index.search(query, size, config)
    host_ids = [c.item_id for c in request.candidates]
    host = set(host_ids)
    ids = index.ids
    retrieved = [(ids[i], float(s)) for i, s in zip(found[0].tolist(), scores[0].tolist(), strict=True)
                 if i >= 0 and ids[i] not in host]
    n_inside = len(host_ids) + len(retrieved)
    if request.slate_size > n_inside:
        raise InvalidInput("slate_size", f"{request.slate_size} is larger than the {n_inside} candidates "
                                         f"({len(host_ids)} sent, {len(retrieved)} retrieved)")
    out = pb.RankRequest()
    out.CopyFrom(request)
    out.ClearField("retrieval")  # logged as DecisionEvent.retrieval; the ranked request is an ordinary one
    out.candidates.extend(pb.Candidate(item_id=item_id, baseline_score=score) for item_id, score in retrieved)
    plan = None
    if explore_outside and config.outside_share > 0.0:
        plan = plan_outside(ids, index.positions, host_ids + [i for i, _ in retrieved],
                            slate_size=max(request.slate_size, 0), share=config.outside_share, cap=cap,
                            draw_key=draw_key)
        if plan is not None and plan.item_ids:
            floor = min((c.baseline_score for c in out.candidates), default=0.0) - 1.0
            floor = floor if math.isfinite(floor) else -1e300
            out.candidates.extend(pb.Candidate(item_id=item_id, baseline_score=floor) for item_id in plan.item_ids)
    return out, RetrievalResult(index, config, size, query[0], len(host_ids), len(retrieved), plan, source)


__all__ = ["RetrievalResult", "check_retrieval", "retrieve"]
