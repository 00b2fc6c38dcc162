"""RankingService servicer: decode → call the decision core → encode. No decision logic here."""

from __future__ import annotations

import grpc

from ranker.errors import map_errors
from ranker.validation import validate_rank_request
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.serving.service import DecisionService


class RankingServicer(pb_grpc.RankingServiceServicer):
    def __init__(self, service: DecisionService) -> None:
        self.service = service

    @map_errors
    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:  # noqa: N802
        surface = self.service.surfaces.get(request.surface)
        validate_rank_request(request, max_candidates=surface.max_candidates if surface else 10_000)
        remaining = context.time_remaining()
        decision, event_id = self.service.rank(request, budget_s=remaining)
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
        return response

    @map_errors
    def ReportOutcome(  # noqa: N802
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        ack = self.service.report_outcome(request)
        return pb.ReportOutcomeResponse(attributed=ack.attributed, duplicate=ack.duplicate)
