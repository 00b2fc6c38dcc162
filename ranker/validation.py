"""Cheap structural checks of a RankRequest, before any decision logic. Each error names the field.

Feature values (NaN, infinities) and item ids (empty, repeated) are checked by the core as it looks candidates up
in its item cache: a cached item was already checked, so the hot path does not read its protobuf fields again.
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
