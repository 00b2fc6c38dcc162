"""Shared fixtures: a real ranking server on 127.0.0.1:0 over a real data dir, and a client stub."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"expected the shared sample data at {SHARED_DATA} (../shared beside the clone)"
    return SHARED_DATA


@dataclass
class RunningServer:
    server: object  # ranker.server.RankingServer
    channel: grpc.Channel
    stub: object  # RankingServiceStub
    data_dir: Path

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(grace_s=5.0)  # type: ignore[attr-defined]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Starts real servers (in this process) on 127.0.0.1:0; all are stopped after the test."""
    from ranker.server import RankingServer
    from recsys_rl.config import ServiceConfig, default_config
    from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
    from recsys_rl.serving.service import DecisionService

    started: list[RunningServer] = []

    def start(config: ServiceConfig | None = None, *, data_dir: Path | None = None,
              learner: str = "thread") -> RunningServer:
        directory = data_dir or tmp_path / f"data{len(started)}"
        service = DecisionService(config or default_config(), directory, learner=learner)
        server = RankingServer(service, host="127.0.0.1", port=0).start()
        assert server.port != 0
        channel = grpc.insecure_channel(server.address)
        running = RunningServer(server, channel, pb_grpc.RankingServiceStub(channel), directory)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
