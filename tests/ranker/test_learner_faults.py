"""The online learner dies under a running server (SIGKILL): the server says so, restarts it, keeps serving and
learning, health stays SERVING, and SIGTERM still exits 0 within 10 s (it used to hang: a learner killed inside
``multiprocessing.Event.wait`` made the server's ``Event.set()`` wait for it forever).

Real parts: ``python -m recsys_rl.cli serve`` subprocesses, loopback gRPC, the spawned learner process, VW.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from tests.helpers import make_request

REPO = Path(__file__).resolve().parents[2]
# Learning within the test: decisions are learned 0.2 s + 1 s grace after serving, a version every 20 of them.
CONFIG = """
[surfaces.default.reward]
attribution_window_seconds = 0.2
[surfaces.default.model]
publish_every = 20
"""
ROUNDS = 3  # the old hang struck two of three SIGTERMs after a kill: three rounds catch it almost surely


def _poll(condition: Callable[[], object], *, timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _learner_pids(server_pid: int) -> set[int]:
    """The server's spawned learner children (not multiprocessing's resource tracker)."""
    pids: set[int] = set()
    for children in Path(f"/proc/{server_pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmdline:
                pids.add(int(pid))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class _Stderr:
    """Collects the server's stderr lines on a thread, so the pipe never fills and lines can be awaited."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            self.lines.append(line)

    def has(self, *parts: str) -> bool:
        return any(all(part in line for part in parts) for line in list(self.lines))


def _latest(data_dir: Path) -> str:
    try:
        return (data_dir / "models" / "default" / "LATEST").read_text()
    except FileNotFoundError:
        return ""


def _latest_created_at(data_dir: Path) -> float:
    """When the version LATEST names was published (0 when there is none yet)."""
    version = _latest(data_dir)
    if not version:
        return 0.0
    return float(json.loads((data_dir / "models" / "default" / version / "manifest.json").read_text())["created_at"])


def test_a_killed_learner_is_restarted_and_sigterm_still_exits(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    for round_ in range(ROUNDS):  # the same data dir each round: the dir lock is released at every exit
        proc = subprocess.Popen([sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir",
                                 str(data_dir), "--config", str(config)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stderr = _Stderr(proc)
        stop_traffic = threading.Event()
        health_seen: list[int] = []
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line.startswith("serving on "), line + "".join(stderr.lines)
            channel = grpc.insecure_channel(line.split()[-1])
            stub = pb_grpc.RankingServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            def traffic() -> None:
                # Bounded: stops when told or after 20,000 calls; a click on the top slot of every third slate.
                for i in range(20_000):
                    if stop_traffic.is_set():
                        return
                    response = stub.Rank(make_request(request_id=f"{round_}-{i}"), timeout=10)
                    if i % 3 == 0:
                        stub.ReportOutcome(pb.ReportOutcomeRequest(
                            event_id=response.event_id, item_id=response.slate[0].item_id, outcome="click",
                            value=1.0), timeout=10)
                    time.sleep(0.002)  # a steady trickle, not a load test: the machine is shared

            def watch_health() -> None:
                while not stop_traffic.is_set():
                    health_seen.append(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
                    time.sleep(0.05)

            threads = [threading.Thread(target=traffic), threading.Thread(target=watch_health)]
            for thread in threads:
                thread.start()
            learner = _poll(lambda: _learner_pids(proc.pid), timeout_s=30, what="the learner process")
            (old_pid,) = learner  # type: ignore[misc]
            _poll(lambda: _latest(data_dir) and (data_dir / "logs").is_dir(), timeout_s=30, what="a model version")

            os.kill(old_pid, signal.SIGKILL)
            killed_at = time.time()
            _poll(lambda: stderr.has("ERROR", f"pid {old_pid}", "SIGKILL"), timeout_s=10, what="the error line")
            new_pids = _poll(lambda: _learner_pids(proc.pid) - {old_pid}, timeout_s=30, what="a restarted learner")
            # A version published after the kill: the restarted learner learns and publishes again.
            _poll(lambda: _latest_created_at(data_dir) > killed_at, timeout_s=60,
                  what="a version published after the restart")
            assert proc.poll() is None and "Traceback" not in "".join(stderr.lines)

            stop_traffic.set()
            for thread in threads:
                thread.join(timeout=30)
            channel.close()
            assert health_seen and set(health_seen) == {health_pb2.HealthCheckResponse.SERVING}, health_seen
            # The old hang: a learner killed just before SIGTERM. Kill the restarted one too, then stop the server.
            (new_pid,) = new_pids  # type: ignore[misc]
            os.kill(new_pid, signal.SIGKILL)
            _poll(lambda: not _alive(new_pid), timeout_s=5, what="the learner to die")
            proc.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            assert proc.wait(timeout=10) == 0, "".join(stderr.lines[-20:])
            assert time.monotonic() - sent_at < 10
        finally:
            stop_traffic.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
