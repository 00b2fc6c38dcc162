"""The public gRPC contract against a real server: Rank, ReportOutcome, health, reflection."""

from __future__ import annotations

import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from tests.helpers import make_request


def test_rank_returns_a_slate_with_consistent_propensities(start_server) -> None:
    running = start_server()
    response = running.stub.Rank(make_request(n=20, slate_size=5), timeout=10)
    assert response.event_id
    assert [item.position for item in response.slate] == [0, 1, 2, 3, 4]
    assert len({item.item_id for item in response.slate}) == 5
    assert all(0.0 < item.propensity <= 1.0 for item in response.slate)
    assert math.isclose(response.slate_propensity, math.prod(i.propensity for i in response.slate), rel_tol=1e-12)
    assert response.serving_mode == pb.SERVING_MODE_LEARNED
    assert response.exploration_cap == pytest.approx(0.1)
    assert response.policy_version == running.server.service.policy_version("default")


def test_same_request_id_gives_the_same_slate(start_server) -> None:
    running = start_server()
    first = running.stub.Rank(make_request(request_id="same"), timeout=10)
    second = running.stub.Rank(make_request(request_id="same"), timeout=10)
    assert [i.item_id for i in first.slate] == [i.item_id for i in second.slate]
    assert first.event_id != second.event_id


def test_report_outcome_is_attributed_inside_the_window(start_server) -> None:
    running = start_server()
    response = running.stub.Rank(make_request(), timeout=10)
    ack = running.stub.ReportOutcome(
        pb.ReportOutcomeRequest(event_id=response.event_id, item_id=response.slate[0].item_id,
                                outcome="click", value=1.0),
        timeout=10,
    )
    assert ack.attributed


def test_health_is_serving_and_reflection_lists_the_services(start_server) -> None:
    running = start_server()
    health = health_pb2_grpc.HealthStub(running.channel)
    for service in ("", "recsys_rl.ranking.v1.RankingService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "recsys_rl.ranking.v1.RankingService" in names
    assert "grpc.health.v1.Health" in names


def test_unknown_event_is_not_found(start_server) -> None:
    running = start_server()
    with pytest.raises(grpc.RpcError) as err:
        running.stub.ReportOutcome(pb.ReportOutcomeRequest(event_id="nope", outcome="click", value=1), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "event_id" in err.value.details()
