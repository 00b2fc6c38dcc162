"""Request builders and admin-listener clients shared by tests."""

from __future__ import annotations

import grpc

from recsys_rl.caps.devcerts import AdminCredentials
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

OPERATOR = "ops-olga"  # identities of the session's admin tokens (conftest.admin_credentials): operator, viewer
VIEWER = "viewer-vic"


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


def admin_settings(credentials: AdminCredentials):  # noqa: ANN201 - ranker.admin_auth.AdminSettings
    """A free admin port serving with ``credentials``."""
    from ranker.admin_auth import AdminSettings

    return AdminSettings(port=0, tls_cert=credentials.server_cert, tls_key=credentials.server_key,
                         authz=credentials.authz)


def admin_channel(address: str, credentials: AdminCredentials, identity: str | None = OPERATOR) -> grpc.Channel:
    """A TLS channel to an admin listener trusting ``credentials``' CA, calling as ``identity`` (None: no token)."""
    from recsys_rl.caps.access import admin_channel as channel

    token = None if identity is None else str(credentials.tokens[identity])
    return channel(address, ca=str(credentials.ca), token_file=token)
