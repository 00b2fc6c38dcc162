"""Every bad input gets INVALID_ARGUMENT naming the field, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from tests.helpers import make_request


def _set(path: Callable[[pb.RankRequest], None]) -> pb.RankRequest:
    request = make_request(n=10, slate_size=3)
    path(request)
    return request


def _too_many(request: pb.RankRequest) -> None:
    for i in range(10_001 - len(request.candidates)):
        request.candidates.add(item_id=f"extra-{i}")


BAD_RANK_REQUESTS: list[tuple[str, Callable[[pb.RankRequest], None], str]] = [
    ("no candidates", lambda r: r.ClearField("candidates"), "candidates"),
    ("slate_size zero", lambda r: setattr(r, "slate_size", 0), "slate_size"),
    ("slate_size negative", lambda r: setattr(r, "slate_size", -2), "slate_size"),
    ("slate_size above candidates", lambda r: setattr(r, "slate_size", 11), "slate_size"),
    ("duplicate item_id", lambda r: setattr(r.candidates[4], "item_id", "item-1"), "candidates[4].item_id"),
    ("empty item_id", lambda r: setattr(r.candidates[2], "item_id", ""), "candidates[2].item_id"),
    ("NaN candidate feature", lambda r: r.candidates[3].features.numeric.__setitem__("price", float("nan")),
     "candidates[3].features.numeric"),
    ("infinite context feature", lambda r: r.context.numeric.__setitem__("hour", float("inf")), "context.numeric"),
    ("NaN embedding", lambda r: r.candidates[1].embedding.extend([0.1, float("nan")]), "candidates[1].embedding"),
    ("empty surface", lambda r: setattr(r, "surface", ""), "surface"),
    ("unknown surface", lambda r: setattr(r, "surface", "nowhere"), "surface"),
    ("more than 10,000 candidates", _too_many, "candidates"),
]


@pytest.mark.parametrize(("case", "mutate", "field"), BAD_RANK_REQUESTS, ids=[c[0] for c in BAD_RANK_REQUESTS])
def test_bad_rank_request_names_the_field(start_server, case: str, mutate, field: str) -> None:
    running = start_server()
    with pytest.raises(grpc.RpcError) as err:
        running.stub.Rank(_set(mutate), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert err.value.details().startswith(field), err.value.details()
    # The server keeps serving after the bad request.
    assert len(running.stub.Rank(make_request(), timeout=10).slate) == 5


def test_bad_outcomes(start_server) -> None:
    running = start_server()
    served = running.stub.Rank(make_request(), timeout=10)
    cases = [
        (pb.ReportOutcomeRequest(event_id=served.event_id, item_id=served.slate[0].item_id, outcome="like",
                                 value=1), "outcome"),
        (pb.ReportOutcomeRequest(event_id=served.event_id, item_id="not-served", outcome="click", value=1),
         "item_id"),
        (pb.ReportOutcomeRequest(event_id=served.event_id, outcome="click", value=float("nan")), "value"),
        (pb.ReportOutcomeRequest(event_id="", outcome="click", value=1), "event_id"),
        (pb.ReportOutcomeRequest(event_id=served.event_id, outcome="", value=1), "outcome"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            running.stub.ReportOutcome(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert err.value.details().startswith(field), err.value.details()
    ok = running.stub.ReportOutcome(
        pb.ReportOutcomeRequest(event_id=served.event_id, item_id=served.slate[1].item_id, outcome="click", value=1),
        timeout=5,
    )
    assert ok.attributed
