"""Request rules: what makes a RankRequest valid, each limit defined once. Every error names the field.

Checked here, once per request, for every path (learned, baseline, replay):

* ``surface``: not empty (the service resolves it: unknown → InvalidInput naming ``surface``);
* ``candidates``: 1 to ``SurfaceConfig.max_candidates`` of them;
* ``slate_size``: 1 to the number of candidates;
* ``candidates[i].baseline_score``: finite, and ``candidates[i].item_id``: not empty, not repeated — checked where
  the candidates are read, once per request (:class:`recsys_rl.serving.candidates.CandidateView`);
* on a surface with a catalog, ``candidates[i].item_id`` of a candidate sent by id only (no features, no embedding):
  held by the catalog (``recsys_rl.catalog.items``, which also completes the candidates);

Checked where the candidate's features are first read, by :class:`recsys_rl.serving.features.ItemExampleCache` (a
cached item was already checked, so the hot path reads no protobuf field of it again): feature values and
embeddings finite (:mod:`recsys_rl.serving.features`).

ReportOutcome (:func:`validate_outcome_request`): ``event_id`` and ``outcome`` not empty, ``value`` finite,
``occurred_at`` (when set) a valid timestamp; the surface's reward definition then checks the outcome name, the
value against the reward range and ``outcome_id``'s length (``recsys_rl.serving.outcomes``).
"""

from __future__ import annotations

import math

from recsys_rl.catalog.items import CatalogVersion
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.candidates import CandidateView, check_item_ids


def validate_rank_request(request: pb.RankRequest, *, max_candidates: int,
                          catalog: CatalogVersion | None = None, wire: bytes | None = None) -> CandidateView:
    """Checks the request's structure; returns its candidates, read once (baseline scores, ids, cache keys), completed
    from ``catalog`` when the surface has one (the view's ``request`` is then the completed request). ``wire``: the
    bytes ``request`` was parsed from, when known (the view slices the candidates out of them)."""
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
    return CandidateView(request, catalog=catalog, data=wire)


# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def validate_outcome_request(request: pb.ReportOutcomeRequest) -> None:
    """The structural rules of a ReportOutcome; each error names the field."""
    if not request.event_id:
        raise InvalidInput("event_id", "must not be empty")
    if not request.outcome:
        raise InvalidInput("outcome", "must not be empty")
    if not math.isfinite(request.value):
        raise InvalidInput("value", f"must be finite, got {request.value}")
    if request.HasField("occurred_at"):
        seconds, nanos = request.occurred_at.seconds, request.occurred_at.nanos
        if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
            raise InvalidInput("occurred_at", f"not a valid timestamp (seconds={seconds}, nanos={nanos}); expected "
                                              "0001-01-01 to 9999-12-31 UTC and 0 <= nanos < 1e9")


__all__ = ["check_item_ids", "validate_outcome_request", "validate_rank_request"]
