"""RankingService servicer: decode → call the decision core → encode. No decision logic here."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from ranker.admission import queued_since
from ranker.errors import map_errors, status_for
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.serving.service import DecisionService


class WireRankRequest:
    """A RankRequest as gRPC parsed it (``message``) with the bytes it was parsed from (``data``).

    Rank's request deserializer (:func:`add_ranking_service`) returns one, so the candidate view slices each
    candidate's bytes out of ``data`` rather than serializing the whole request again to get them (~20 µs at 100
    candidates; ``recsys_rl.serving.candidates.CandidateView``). Wrappers around the servicer pass it on unread."""

    __slots__ = ("message", "data")

    def __init__(self, message: pb.RankRequest, data: bytes) -> None:
        self.message = message
        self.data = data


def wire_rank_request(parse: Callable[[bytes], pb.RankRequest]) -> Callable[[bytes], WireRankRequest]:
    """Rank's request deserializer: ``parse`` (RankRequest.FromString, looked up at registration) plus the bytes."""

    def deserialize(data: bytes) -> WireRankRequest:
        return WireRankRequest(parse(data), data)

    return deserialize


def add_ranking_service(servicer: pb_grpc.RankingServiceServicer, server: grpc.Server) -> None:
    """``pb_grpc.add_RankingServiceServicer_to_server`` with Rank's request kept with its wire bytes
    (:class:`WireRankRequest`); ReportOutcome as generated."""
    handlers = {
        "Rank": grpc.unary_unary_rpc_method_handler(
            servicer.Rank, request_deserializer=wire_rank_request(pb.RankRequest.FromString),
            response_serializer=pb.RankResponse.SerializeToString),
        "ReportOutcome": grpc.unary_unary_rpc_method_handler(
            servicer.ReportOutcome, request_deserializer=pb.ReportOutcomeRequest.FromString,
            response_serializer=pb.ReportOutcomeResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RankingService"].full_name


class RankingServicer(pb_grpc.RankingServiceServicer):
    """``max_queue_wait_s``: a Rank that waited longer than this in the server's queue while others still wait
    behind it (``backlog()`` > 0) is refused (RESOURCE_EXHAUSTED) rather than served late: refusing is what drains
    a backlog. One with nobody behind it (a lone stall: a cold start, a GC pause) costs no one else anything and
    gets the baseline instead. A Rank whose caller's deadline passed while it waited is refused either way."""

    def __init__(self, service: DecisionService, *, max_queue_wait_s: float | None = None,
                 backlog: Callable[[], int] = lambda: 0) -> None:
        self.service = service
        self.metrics = service.metrics  # recsys_rl.metrics hooks: a no-op unless `serve --metrics-port`
        self.max_queue_wait_s = max_queue_wait_s
        self.backlog = backlog

    @map_errors
    def Rank(self, request: pb.RankRequest | WireRankRequest,  # noqa: N802
             context: grpc.ServicerContext) -> pb.RankResponse:
        wire = None
        if type(request) is WireRankRequest:  # served through add_ranking_service; a direct caller passes the message
            request, wire = request.message, request.data
        now = time.perf_counter()
        remaining = context.time_remaining()  # None when the client set no deadline
        deadline = None if remaining is None else now + remaining
        arrived = queued_since()  # None when not run by the server's StampingExecutor
        started = now if arrived is None else arrived  # the latency a host sees includes the queue wait
        try:
            if arrived is not None:
                self._admit(now, arrived, remaining)
            decision, event_id = self.service.rank(request, deadline=deadline, queued_since=arrived, wire=wire)
        except Exception as exc:
            self.metrics.rank_failed(request.surface, status_for(exc).name, time.perf_counter() - started)
            raise
        response = pb.RankResponse(
            event_id=event_id,
            slate_propensity=decision.slate_propensity,
            policy_version=decision.policy_version,
            serving_mode=decision.serving_mode,
            exploration_cap=decision.cap,
            fallback_reason=decision.fallback_reason,
        )
        add = response.slate.add  # `response.slate` builds a new container wrapper on every read: once, not per slot
        for position, slot in enumerate(decision.slots):
            add(
                item_id=slot.item_id,
                position=position,
                propensity=slot.propensity,
                score=slot.score,
                explored=slot.explored,
            )
        self.metrics.ranked(decision, time.perf_counter() - started)
        return response

    def _admit(self, now: float, arrived: float, remaining: float | None) -> None:
        """Raises Overloaded (RESOURCE_EXHAUSTED) for a Rank that must not be decided at all."""
        waited_ms = (now - arrived) * 1e3
        if self.max_queue_wait_s is not None and now - arrived > self.max_queue_wait_s and self.backlog() > 0:
            raise self.service.refuse_overloaded(
                f"overloaded: waited {waited_ms:.1f} ms in the server's queue (limit "
                f"{self.max_queue_wait_s * 1e3:g} ms); nothing was decided or logged")
        if remaining is not None and remaining <= 0:
            raise self.service.refuse_overloaded(
                f"overloaded: the caller's deadline passed while waiting {waited_ms:.1f} ms in the server's "
                "queue; nothing was decided or logged")

    @map_errors
    def ReportOutcome(  # noqa: N802
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        started = time.perf_counter()
        try:
            ack = self.service.report_outcome(request)
        except Exception as exc:
            self.metrics.outcome_reported(status_for(exc).name, time.perf_counter() - started)
            raise
        self.metrics.outcome_reported("OK", time.perf_counter() - started)
        return pb.ReportOutcomeResponse(attributed=ack.attributed, duplicate=ack.duplicate)
