"""Request builders shared by tests."""

from __future__ import annotations

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb


def make_request(n: int = 20, slate_size: int = 5, *, request_id: str = "r1", surface: str = "default",
                 user_id: str = "u1") -> pb.RankRequest:
    request = pb.RankRequest(request_id=request_id, surface=surface, user_id=user_id, slate_size=slate_size)
    request.context.numeric["hour"] = 13.0
    request.context.categorical["device"] = "ios"
    request.context.tags.extend(["returning"])
    for i in range(n):
        candidate = request.candidates.add(item_id=f"item-{i}", baseline_score=float(n - i))
        candidate.features.numeric["price"] = 1.0 + i
        candidate.features.categorical["topic"] = f"t{i % 4}"
        candidate.features.tags.append(f"tag{i % 3}")
    return request
