"""Shared fixtures: a real ranking server on 127.0.0.1:0 over a real data dir, its admin listener (TLS, bearer
tokens; real certificates made once per session), and client stubs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from recsys_rl.caps.devcerts import AdminCredentials, throwaway_admin_credentials
from tests.helpers import OPERATOR, VIEWER, admin_channel, admin_settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"expected the shared sample data at {SHARED_DATA} (../shared beside the clone)"
    return SHARED_DATA


@pytest.fixture(scope="session")
def admin_credentials(tmp_path_factory: pytest.TempPathFactory) -> AdminCredentials:
    """A CA, a server certificate for 127.0.0.1/localhost, and tokens for OPERATOR and VIEWER (real openssl)."""
    return throwaway_admin_credentials(tmp_path_factory.mktemp("admin") / "trusted",
                                       {OPERATOR: "operator", VIEWER: "viewer"}, name="test")


@pytest.fixture(scope="session")
def impostor_credentials(tmp_path_factory: pytest.TempPathFactory) -> AdminCredentials:
    """Another CA, its own server certificate, and tokens the trusted authorization file does not know."""
    return throwaway_admin_credentials(tmp_path_factory.mktemp("admin") / "impostor", {OPERATOR: "operator"},
                                       name="impostor")


@dataclass
class RunningServer:
    server: object  # ranker.server.RankingServer
    channel: grpc.Channel
    stub: object  # RankingServiceStub
    data_dir: Path
    admin_channel: grpc.Channel  # to the admin listener, as OPERATOR
    admin: object  # PolicyAdminServiceStub on admin_channel

    @property
    def admin_address(self) -> str:
        return self.server.admin_address  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.channel.close()
        self.admin_channel.close()
        self.server.stop(grace_s=5.0)  # type: ignore[attr-defined]


@pytest.fixture
def start_server(tmp_path: Path, admin_credentials: AdminCredentials) -> Iterator[Callable[..., RunningServer]]:
    """Starts real servers (in this process) on 127.0.0.1:0, each with its admin listener on another free port;
    all are stopped after the test."""
    from ranker.server import RankingServer
    from recsys_rl.config import ServiceConfig, default_config
    from recsys_rl.ranking.v1 import policy_admin_service_pb2_grpc as admin_grpc
    from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
    from recsys_rl.serving.service import DecisionService

    started: list[RunningServer] = []

    def start(config: ServiceConfig | None = None, *, data_dir: Path | None = None,
              learner: str = "thread", **server_options: object) -> RunningServer:
        """``server_options``: more RankingServer arguments (e.g. ``max_queue_wait_ms=None``)."""
        directory = data_dir or tmp_path / f"data{len(started)}"
        service = DecisionService(config or default_config(), directory, learner=learner)
        server = RankingServer(service, host="127.0.0.1", port=0, admin=admin_settings(admin_credentials),
                               **server_options).start()  # type: ignore[arg-type]
        assert server.port != 0 and server.admin_port not in (0, server.port)
        channel = grpc.insecure_channel(server.address)
        admin = admin_channel(server.admin_address, admin_credentials)
        running = RunningServer(server, channel, pb_grpc.RankingServiceStub(channel), directory, admin,
                                admin_grpc.PolicyAdminServiceStub(admin))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
