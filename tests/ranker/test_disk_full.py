"""The data dir's log on a disk that fills up: Rank keeps answering, the log recovers by itself, SIGTERM exits.

CI runs as root, so this uses a real 2 MiB tmpfs mounted on ``<data dir>/logs`` and filled with a filler file
(``disk_faults.FullDisk``); as another user it falls back to an injected ENOSPC in the log writer's ``_write``
hook, with the same observable contract. Unmounted in ``finally`` whatever happens.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import grpc

from logging_schema.reader import read_log
from ranker.server import RankingServer
from recsys_rl.config import default_config
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.serving.log_guard import LOG_UNAVAILABLE
from recsys_rl.serving.service import DecisionService
from tests.helpers import make_request
from tests.ranker.disk_faults import FullDisk

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 20.0  # bound of polls that only a broken server reaches
RECOVERY_S = 2.0  # space back → decisions logged again (issue 7's goal)


def _rank(stub: pb_grpc.RankingServiceStub, request_id: str) -> pb.RankResponse:
    return stub.Rank(make_request(request_id=request_id), timeout=10)


def test_a_full_disk_never_costs_a_rank_and_the_log_recovers_with_a_gap_record(tmp_path: Path) -> None:
    with FullDisk(tmp_path) as disk:
        disk.install()
        service = DecisionService(default_config(), tmp_path, learner="thread", watch_models=False)
        server = RankingServer(service).start()
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.RankingServiceStub(channel)
        try:
            warm = [_rank(stub, f"warm-{i}") for i in range(5)]
            assert {r.serving_mode for r in warm} == {pb.SERVING_MODE_LEARNED}
            assert service.writer.flush(timeout=WAIT_S)

            disk.fill()
            answers: list[pb.RankResponse] = []
            deadline = time.monotonic() + WAIT_S
            while service.writer.available:  # the records that still fit, then the first failing write
                assert time.monotonic() < deadline, "the log writer never noticed the full disk"
                answers.append(_rank(stub, f"filling-{len(answers)}"))
            down = [_rank(stub, f"down-{i}") for i in range(200)]  # every call answered: no RpcError raised
            assert all(r.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK for r in down)
            assert {r.fallback_reason for r in down} == {LOG_UNAVAILABLE}  # the host sees why
            assert all(r.slate_propensity == 1.0 and all(s.propensity == 1.0 for s in r.slate) for r in down)
            assert all([s.item_id for s in r.slate] == [f"item-{k}" for k in range(5)] for r in down)  # baseline
            # Every fallback of the episode is the log's (reason log_unavailable), and counted.
            fallbacks = sum(r.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK for r in answers + down)
            assert service.log_guard.stats().decisions_unlogged == fallbacks

            click = pb.ReportOutcomeRequest(event_id=warm[0].event_id, item_id=warm[0].slate[0].item_id,
                                            outcome="click", value=1.0, outcome_id="click-1")
            try:
                stub.ReportOutcome(click, timeout=10)
                raise AssertionError("ReportOutcome was acknowledged while the log could not take it")
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
                assert "retry with the same outcome_id" in exc.details()

            disk.free()
            freed = time.monotonic()
            probes = 0
            while True:  # poll: the first decision served with its event queued again
                probes += 1
                response = _rank(stub, f"probe-{probes}")
                if response.serving_mode != pb.SERVING_MODE_BASELINE_FALLBACK:
                    break
                assert time.monotonic() - freed < RECOVERY_S, f"not logging again {RECOVERY_S} s after space returned"
                time.sleep(0.01)
            assert service.writer.flush(timeout=WAIT_S)
            assert stub.ReportOutcome(click, timeout=10).attributed  # the host's retry is accepted now
            unlogged = service.log_guard.stats().decisions_unlogged
            assert unlogged == fallbacks + probes - 1
        finally:
            channel.close()
            server.stop(grace_s=1.0)
        result = read_log(disk.logs)  # before the tmpfs goes away
    [gap] = result.gaps
    assert gap.decisions_unlogged == unlogged and dict(gap.decisions_unlogged_by_surface) == {"default": unlogged}
    assert gap.outcomes_refused == 1 and gap.reason.startswith("ENOSPC")
    logged = {d.request_id for d in result.decisions}
    assert {f"warm-{i}" for i in range(5)} <= logged and f"probe-{probes}" in logged
    # Decisions accepted before the writer noticed were held and written once space returned, not dropped.
    learned_while_filling = [f"filling-{i}" for i, r in enumerate(answers) if r.serving_mode == pb.SERVING_MODE_LEARNED]
    assert set(learned_while_filling) <= logged
    assert not any(d.request_id.startswith("down-") for d in result.decisions)
    assert result.stats.corrupt_records == result.stats.torn_tail_records == 0
    assert [o.event_id for o in result.outcomes] == [warm[0].event_id]  # refused once, logged once on the retry


def test_sigterm_on_a_full_disk_exits_within_10_s_and_says_what_was_lost(tmp_path: Path) -> None:
    # A generous decision budget: a cold first Rank on a loaded machine must not fall back on time, so the only
    # fallback this test can see is the full disk's.
    config = tmp_path / "serve.toml"
    config.write_text("[surfaces.default]\ndecision_budget_ms = 5000\n")
    with FullDisk(tmp_path) as disk:
        proc = subprocess.Popen(disk.server_command("serve", "--port", "0", "--data-dir", str(tmp_path),
                                                    "--config", str(config)),
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line.startswith("serving on "), line + proc.stderr.read()  # type: ignore[union-attr]
            with grpc.insecure_channel(line.split()[-1]) as channel:
                stub = pb_grpc.RankingServiceStub(channel)
                assert _rank(stub, "warm").serving_mode == pb.SERVING_MODE_LEARNED
                disk.fill()
                deadline = time.monotonic() + WAIT_S
                i = 0
                while _rank(stub, f"r{i}").serving_mode != pb.SERVING_MODE_BASELINE_FALLBACK:
                    assert time.monotonic() < deadline, "the server never noticed the full disk"
                    i += 1
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            code = proc.wait(timeout=30)
            took = time.monotonic() - sent
            stderr = proc.stderr.read()  # type: ignore[union-attr]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, stderr
    assert took < 10.0, f"SIGTERM took {took:.1f} s"
    assert "accepted records could not be written before shutdown" in stderr, stderr
    assert "decisions served unlogged" in stderr and "no gap record could be written" in stderr, stderr
