"""RankingService servicer: decode → call the decision core → encode. No decision logic here."""

from __future__ import annotations

import time

import grpc

from ranker.errors import map_errors, status_for
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.serving.service import DecisionService


class RankingServicer(pb_grpc.RankingServiceServicer):
    def __init__(self, service: DecisionService) -> None:
        self.service = service
        self.metrics = service.metrics  # recsys_rl.metrics hooks: a no-op unless `serve --metrics-port`

    @map_errors
    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:  # noqa: N802
        started = time.perf_counter()
        remaining = context.time_remaining()  # None when the client set no deadline
        deadline = None if remaining is None else started + remaining
        try:
            decision, event_id = self.service.rank(request, deadline=deadline)
        except Exception as exc:
            self.metrics.rank_failed(request.surface, status_for(exc).name, time.perf_counter() - started)
            raise
        response = pb.RankResponse(
            event_id=event_id,
            slate_propensity=decision.slate_propensity,
            policy_version=decision.policy_version,
            serving_mode=decision.serving_mode,
            exploration_cap=decision.cap,
        )
        for position, slot in enumerate(decision.slots):
            response.slate.add(
                item_id=slot.item_id,
                position=position,
                propensity=slot.propensity,
                score=slot.score,
                explored=slot.explored,
            )
        self.metrics.ranked(decision, time.perf_counter() - started)
        return response

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
