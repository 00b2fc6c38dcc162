"""``recsys-rl serve --workers 2`` as a real subprocess on 127.0.0.1:0, and channels that each open their own
connection (SO_REUSEPORT spreads connections, not calls, over the workers)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from recsys_rl.caps.access import admin_channel
from recsys_rl.caps.devcerts import AdminCredentials
from recsys_rl.ranking.v1 import policy_admin_service_pb2_grpc as admin_grpc
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from tests.helpers import OPERATOR, make_request

REPO = Path(__file__).resolve().parents[3]
WORKER_METADATA = "x-recsys-rl-worker"


def poll(condition: Callable[[], object], *, timeout_s: float, what: str) -> object:
    """``condition()``'s first truthy value, polled until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@dataclass
class Fleet:
    proc: subprocess.Popen[str]
    address: str
    data_dir: Path
    stderr: list[str] = field(default_factory=list)
    channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self) -> grpc.Channel:
        # A local subchannel pool: channels to one address would otherwise share one TCP connection.
        channel = grpc.insecure_channel(self.address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.channels.append(channel)
        return channel

    def stub(self, channel: grpc.Channel) -> pb_grpc.RankingServiceStub:
        return pb_grpc.RankingServiceStub(channel)

    def stubs_by_worker(self, per_worker: int = 1, *, attempts: int = 48) -> dict[int, list[grpc.Channel]]:
        """Opens connections until ``per_worker`` reach each of the two workers (the kernel picks, per
        connection); returns the channels by the worker they reach."""
        found: dict[int, list[grpc.Channel]] = {0: [], 1: []}
        for n in range(attempts):
            channel = self.channel()
            found[rank(self.stub(channel), f"probe{n}")[1]].append(channel)
            if all(len(channels) >= per_worker for channels in found.values()):
                return {k: v[:per_worker] for k, v in found.items()}
        raise AssertionError(f"{attempts} connections did not reach both workers: {found}")

    def status(self) -> dict[str, object]:
        try:
            return json.loads((self.data_dir / "run" / "workers.json").read_text())
        except (OSError, ValueError):
            return {}

    def worker_pids(self) -> dict[int, int]:
        return {int(k): v for k, v in self.status().get("pids", {}).items()}  # type: ignore[union-attr]

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def rank(stub: pb_grpc.RankingServiceStub, request_id: str = "r1") -> tuple[pb.RankResponse, int]:
    """One Rank; returns the response and the index of the worker that answered (response metadata)."""
    response, call = stub.Rank.with_call(make_request(request_id=request_id), timeout=10)
    return response, worker_of(call)


def worker_of(call: grpc.Call) -> int:
    return int(dict(call.initial_metadata())[WORKER_METADATA])


def start_with_admin(serve_workers: Callable[..., Fleet], tmp_path: Path, credentials: AdminCredentials,
                     config: str) -> tuple[Fleet, str]:
    """``serve --workers 2`` with ``config`` (TOML text) and its admin listener; returns the fleet and the admin
    address."""
    path = tmp_path / "fleet.toml"
    path.write_text(config)
    fleet = serve_workers("--config", str(path), "--admin-port", "0", *credentials.serve_args())
    line = fleet.proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("admin on "), line + "".join(fleet.stderr)
    return fleet, line.split()[-1]


def admin_stub(address: str, credentials: AdminCredentials) -> admin_grpc.PolicyAdminServiceStub:
    """A stub on its own connection (SO_REUSEPORT picks a worker per connection), as OPERATOR."""
    channel = admin_channel(address, ca=str(credentials.ca), token_file=str(credentials.tokens[OPERATOR]))
    return admin_grpc.PolicyAdminServiceStub(channel)


@pytest.fixture
def serve_workers(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Starts ``recsys-rl serve --workers 2 --port 0``; killed after the test if still running."""
    started: list[Fleet] = []

    def start(*extra: str) -> Fleet:
        data_dir = tmp_path / "data"
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--workers", "2", "--data-dir",
             str(data_dir), *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fleet = Fleet(proc, "", data_dir)
        started.append(fleet)

        def drain() -> None:  # keeps the pipe from filling; the lines explain a failure
            for line in proc.stderr:  # type: ignore[union-attr]
                fleet.stderr.append(line)

        threading.Thread(target=drain, daemon=True).start()
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("serving on "), line + "".join(fleet.stderr)
        fleet.address = line.split()[-1]
        assert not fleet.address.endswith(":0")
        return fleet

    yield start
    for fleet in started:
        fleet.close()
        if fleet.proc.poll() is None:
            fleet.proc.send_signal(signal.SIGTERM)
            try:
                fleet.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                fleet.proc.kill()
                fleet.proc.wait(timeout=10)
