"""Cheap structural checks of a RankRequest, before any decision logic. Each error names the field.

Feature values (NaN, infinities) are checked by the core when it first builds an item's example: a cached item
was already checked, so the hot path does not read its protobuf maps again.
"""

from __future__ import annotations

from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

MAX_CANDIDATES = 10_000


def validate_rank_request(request: pb.RankRequest, *, max_candidates: int = MAX_CANDIDATES) -> None:
    if not request.surface:
        raise InvalidInput("surface", "must not be empty")
    n = len(request.candidates)
    if n == 0:
        raise InvalidInput("candidates", "must not be empty")
    if n > max_candidates:
        raise InvalidInput("candidates", f"{n} candidates is more than the limit of {max_candidates}")
    if request.slate_size <= 0:
        raise InvalidInput("slate_size", f"must be positive, got {request.slate_size}")
    if request.slate_size > n:
        raise InvalidInput("slate_size", f"{request.slate_size} is larger than the {n} candidates")
    item_ids = [candidate.item_id for candidate in request.candidates]
    unique = set(item_ids)
    if len(unique) == n and "" not in unique:
        return  # the common case, in one pass over the ids; the slow path below finds the offending index
    seen: set[str] = set()
    for index, item_id in enumerate(item_ids):
        if not item_id:
            raise InvalidInput(f"candidates[{index}].item_id", "must not be empty")
        if item_id in seen:
            raise InvalidInput(f"candidates[{index}].item_id", f"duplicate item_id {item_id!r}")
        seen.add(item_id)
