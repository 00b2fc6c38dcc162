"""Request rules: what makes a RankRequest valid, each limit defined once. Every error names the field.

Checked here, once per request, for every path (learned, baseline, replay):

* ``surface``: not empty (the service resolves it: unknown → InvalidInput naming ``surface``);
* ``candidates``: 1 to ``SurfaceConfig.max_candidates`` of them;
* ``slate_size``: 1 to the number of candidates;
* ``candidates[i].baseline_score``: finite (the baseline must always be able to serve).

Checked where the candidate is first read, by :class:`recsys_rl.serving.features.ItemExampleCache` (a cached
item was already checked, so the hot path reads no protobuf field of it again), with the rules defined here:

* ``candidates[i].item_id``: not empty, not repeated (:func:`check_item_ids`);
* feature values and embeddings: finite (:mod:`recsys_rl.serving.features`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb


def validate_rank_request(request: pb.RankRequest, *, max_candidates: int) -> np.ndarray:
    """Checks the request's structure; returns the baseline scores (float64, one per candidate)."""
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
    baseline = np.fromiter((c.baseline_score for c in request.candidates), dtype=np.float64, count=n)
    if not np.isfinite(baseline).all():
        i = int(np.flatnonzero(~np.isfinite(baseline))[0])
        raise InvalidInput(f"candidates[{i}].baseline_score", f"must be finite, got {baseline[i]}")
    return baseline


def check_item_ids(item_ids: Sequence[str], field: str = "candidates") -> None:
    """Item ids must be non-empty and distinct within one request (a slate never repeats an item)."""
    if len(set(item_ids)) == len(item_ids) and "" not in item_ids:
        return
    seen: set[str] = set()
    for index, item_id in enumerate(item_ids):
        if not item_id:
            raise InvalidInput(f"{field}[{index}].item_id", "must not be empty")
        if item_id in seen:
            raise InvalidInput(f"{field}[{index}].item_id", f"duplicate item_id {item_id!r}")
        seen.add(item_id)


__all__ = ["check_item_ids", "validate_rank_request"]
