"""``recsys-rl serve --workers 2``: both workers serve one port, an outcome reaches the worker that served its
decision wherever it lands, bad ids are refused without harm, a killed worker comes back, SIGTERM loses nothing.

Real parts: the CLI in a subprocess, its two worker processes and learner, loopback gRPC, the workers' Unix
sockets, VW, the log streams read back from disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logging_schema.reader import read_log
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from tests.helpers import make_request
from tests.ranker.workers.conftest import REPO, poll, rank, worker_of

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _stream(data_dir: Path, index: int):  # noqa: ANN202 - logging_schema.reader.LogRead
    return read_log(data_dir / "logs" / f"worker-{index}")


def _outcome(event_id: str, item_id: str, outcome_id: str) -> pb.ReportOutcomeRequest:
    return pb.ReportOutcomeRequest(event_id=event_id, item_id=item_id, outcome="click", value=1.0,
                                   outcome_id=outcome_id)


def test_both_workers_serve_and_an_outcome_reaches_the_worker_that_served_it(serve_workers) -> None:  # noqa: ANN001
    fleet = serve_workers()
    by_worker: dict[int, list[tuple[object, pb.RankResponse]]] = {0: [], 1: []}
    for n in range(12):  # connections, not calls, are spread: 12 channels miss one worker with p = 2/4096
        stub = fleet.stub(fleet.channel())
        response, worker = rank(stub, f"c{n}")
        assert response.event_id.startswith(f"w{worker}.")
        by_worker[worker].append((stub, response))
    assert by_worker[0] and by_worker[1], {k: len(v) for k, v in by_worker.items()}

    # A decision of worker 0, its click sent on a connection that reaches worker 1: forwarded to worker 0.
    (stub0, decision), (stub1, _) = by_worker[0][0], by_worker[1][0]
    item = decision.slate[0].item_id
    ack, call = stub1.ReportOutcome.with_call(_outcome(decision.event_id, item, "click-1"), timeout=10)
    assert worker_of(call) == 1 and ack.attributed and not ack.duplicate
    # The host's retry through a third connection (to either worker) is a duplicate, answered as the first.
    other = by_worker[1][1][0] if len(by_worker[1]) > 1 else by_worker[0][1][0] if len(by_worker[0]) > 1 else stub0
    retry = other.ReportOutcome(_outcome(decision.event_id, item, "click-1"), timeout=10)
    assert retry.attributed and retry.duplicate

    # Forged and malformed ids: refused with the status that says why, naming event_id; nothing crashes.
    refusals = {
        "w1." + "0" * 32: grpc.StatusCode.NOT_FOUND,  # a worker that exists never served it
        "w7." + "0" * 32: grpc.StatusCode.NOT_FOUND,  # no worker 7 runs
        "w1.not-hex": grpc.StatusCode.INVALID_ARGUMENT,
        "wx." + "0" * 32: grpc.StatusCode.INVALID_ARGUMENT,
        "0" * 32: grpc.StatusCode.NOT_FOUND,  # no prefix (a single server's id): handled where it lands
    }
    for event_id, code in refusals.items():
        for stub in (stub0, stub1):
            with pytest.raises(grpc.RpcError) as error:
                stub.ReportOutcome(_outcome(event_id, item, "x"), timeout=10)
            assert error.value.code() == code, (event_id, error.value.details())
            assert "event_id" in error.value.details()
    assert rank(stub0, "after")[1] == 0 and rank(stub1, "after")[1] == 1  # both still serve

    fleet.close()
    fleet.proc.send_signal(signal.SIGTERM)
    assert fleet.proc.wait(timeout=15) == 0, "".join(fleet.stderr)
    streams = {k: _stream(fleet.data_dir, k) for k in (0, 1)}
    for worker, served in by_worker.items():  # each decision in the stream of the worker that served it
        logged = {event.event_id for event in streams[worker].decisions}
        assert {response.event_id for _, response in served} <= logged
    clicks = [(k, o) for k, s in streams.items() for o in s.outcomes if o.event_id == decision.event_id]
    assert [(k, o.outcome_id, o.attributed) for k, o in clicks] == [(0, "click-1", True)]  # once, in its owner's


def test_a_killed_worker_is_restarted_while_the_other_serves(serve_workers) -> None:  # noqa: ANN001
    fleet = serve_workers()
    pids = poll(lambda: len(fleet.worker_pids()) == 2 and fleet.worker_pids(), timeout_s=10, what="workers.json")
    (channel,) = fleet.stubs_by_worker()[0]
    survivor, health = fleet.stub(channel), health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING  # from "serving on" on

    os.kill(pids[1], signal.SIGKILL)  # type: ignore[index]
    seen: list[int] = []
    served = 0

    def restarted() -> bool:
        nonlocal served
        response, worker = rank(survivor, f"during{served}")  # the survivor keeps serving throughout
        assert worker == 0 and response.event_id.startswith("w0.")
        served += 1
        seen.append(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
        new = fleet.worker_pids().get(1)
        return new is not None and new != pids[1] and seen[-1] == SERVING  # type: ignore[index]

    poll(restarted, timeout_s=40, what="worker 1 to be restarted and health SERVING again")
    assert NOT_SERVING in seen, seen  # health said so while worker 1 was down
    assert served > 1
    assert any("worker 1 (pid" in line and "SIGKILL" in line for line in fleet.stderr), "".join(fleet.stderr)

    def reaches_restarted_worker() -> bool:  # new connections reach the new worker 1 too
        return rank(fleet.stub(fleet.channel()), "new")[1] == 1

    poll(reaches_restarted_worker, timeout_s=20, what="a connection to the restarted worker")


def test_sigterm_drains_every_worker_and_loses_no_acknowledged_decision(serve_workers) -> None:  # noqa: ANN001
    fleet = serve_workers()
    acknowledged: list[str] = []
    errors: list[grpc.StatusCode] = []
    enough = threading.Event()

    channels = [channel for per_worker in fleet.stubs_by_worker(2).values() for channel in per_worker]

    def client(n: int) -> None:
        stub = fleet.stub(channels[n])
        for i in range(5_000):  # bounded; stops at the first refusal once shutdown begins
            try:
                acknowledged.append(stub.Rank(make_request(request_id=f"{n}-{i}"), timeout=10).event_id)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    continue  # overload refusal (ranker.admission): nothing decided or logged; a host retries
                errors.append(exc.code())
                return
            if len(acknowledged) >= 300:
                enough.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    assert enough.wait(timeout=60), "".join(fleet.stderr)
    signalled = time.monotonic()
    fleet.proc.send_signal(signal.SIGTERM)
    assert fleet.proc.wait(timeout=15) == 0, "".join(fleet.stderr)
    took = time.monotonic() - signalled
    for thread in threads:
        thread.join(timeout=30)
    assert took < 10.0, took
    assert set(errors) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, errors
    logged = {e.event_id for k in (0, 1) for e in _stream(fleet.data_dir, k).decisions}
    missing = [event_id for event_id in acknowledged if event_id not in logged]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged decisions are not in the streams"
    assert {event_id[:3] for event_id in acknowledged} == {"w0.", "w1."}  # both workers took traffic
    assert not (fleet.data_dir / "run" / "workers.json").exists()


def test_workers_of_a_killed_parent_exit_and_a_new_server_waits_for_them(serve_workers) -> None:  # noqa: ANN001
    fleet = serve_workers()
    pids = poll(lambda: len(fleet.worker_pids()) == 2 and fleet.worker_pids(), timeout_s=10, what="workers.json")
    stub = fleet.stub(fleet.channel())
    acknowledged = [stub.Rank(make_request(request_id=f"r{i}"), timeout=10).event_id for i in range(20)]
    fleet.proc.kill()  # no graceful stop: the workers notice they were orphaned
    fleet.proc.wait(timeout=10)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0  # exited, not yet reaped by init

    assert not all(gone(pid) for pid in pids.values())  # type: ignore[union-attr] # still draining
    again = serve_workers()  # the same data dir at once: it waits for the lock the orphans hold, then serves
    assert all(gone(pid) for pid in pids.values())  # type: ignore[union-attr]
    assert rank(again.stub(again.channel()), "again")[0].event_id
    logged = {e.event_id for k in (0, 1) for e in _stream(fleet.data_dir, k).decisions}
    assert set(acknowledged) <= logged  # they drained: nothing acknowledged was lost


def test_workers_1_is_the_single_process_server(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--workers", "1",
                             "--data-dir", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("serving on "), line
        with grpc.insecure_channel(line.split()[-1]) as channel:
            response, call = pb_grpc.RankingServiceStub(channel).Rank.with_call(make_request(), timeout=10)
        assert "x-recsys-rl-worker" not in dict(call.initial_metadata())
        assert len(response.event_id) == 32 and "." not in response.event_id  # plain hex, as before
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "run" / "workers.json").exists()
    assert [p.name for p in (tmp_path / "logs").iterdir() if p.is_dir()] == []  # one stream, D/logs itself
    assert [e.event_id for e in read_log(tmp_path / "logs").decisions] == [response.event_id]

