"""SIGTERM: in-flight calls finish, every acknowledged decision is in the log, exit code 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc

from logging_schema.reader import read_log
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from tests.helpers import make_request

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_flushes_every_acknowledged_decision(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()  # blocks until the server has bound its port
        assert line.startswith("serving on "), line + proc.stderr.read()
        address = line.split()[-1]
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.RankingServiceStub(channel)
        acknowledged: list[str] = []
        errors: list[grpc.StatusCode] = []
        enough = threading.Event()

        def client() -> None:
            # Bounded: at most 5,000 calls; stops at the first refusal once shutdown begins.
            for i in range(5_000):
                try:
                    acknowledged.append(stub.Rank(make_request(request_id=f"r{i}"), timeout=10).event_id)
                except grpc.RpcError as exc:
                    errors.append(exc.code())
                    return
                if len(acknowledged) >= 200:
                    enough.set()

        threads = [threading.Thread(target=client) for _ in range(3)]
        for thread in threads:
            thread.start()
        assert enough.wait(timeout=60), "server did not acknowledge 200 decisions"
        proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all(code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) for code in errors), errors
    logged = {event.event_id for event in read_log(tmp_path / "logs").decisions}
    missing = [event_id for event_id in acknowledged if event_id not in logged]
    assert not missing, f"{len(missing)} acknowledged decisions are not in the log"
    assert len(acknowledged) >= 200
