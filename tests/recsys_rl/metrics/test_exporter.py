"""`recsys-rl serve --metrics-port 0` as a real process: scrape /metrics over HTTP after known traffic.

The server runs in its own process (multiprocess mode needs PROMETHEUS_MULTIPROC_DIR set before prometheus_client is
imported, which this test process cannot promise), with two surfaces: ``default`` and ``tight``, whose decision
budget is so small every decision falls back (reason ``deadline``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from tests.helpers import make_request

REPO = Path(__file__).resolve().parents[3]
CONFIG = """
[surfaces.default]
exploration_cap = 0.2

[surfaces.tight]
exploration_cap = 0.2
decision_budget_ms = 0.000001
"""
N_DEFAULT, N_TIGHT, N_UNKNOWN = 30, 7, 3
SLATE = 5


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, str, Path]]:
    data_dir = tmp_path / "data"
    stale = data_dir / "run" / "metrics" / "counter_999999.db"  # a previous run's file: must not be added in
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    config = tmp_path / "surfaces.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--metrics-port", "0", "--data-dir",
         str(data_dir), "--config", str(config)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        serving = process.stdout.readline().split()  # type: ignore[union-attr]
        metrics = process.stdout.readline().split()  # type: ignore[union-attr]
        assert serving[:2] == ["serving", "on"] and metrics[:2] == ["metrics", "on"], (serving, metrics)
        yield process, serving[-1], metrics[-1], data_dir
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum over the series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_scrape_counts_what_was_sent(served: tuple[subprocess.Popen, str, str, Path]) -> None:
    process, address, metrics_address, data_dir = served
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.RankingServiceStub(channel)
    responses = [stub.Rank(make_request(20, SLATE, request_id=f"d{i}", user_id=f"u{i}"), timeout=10)
                 for i in range(N_DEFAULT)]
    tight = [stub.Rank(make_request(20, SLATE, request_id=f"t{i}", surface="tight"), timeout=10)
             for i in range(N_TIGHT)]
    assert all(r.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK for r in tight)
    for i in range(N_UNKNOWN):
        with pytest.raises(grpc.RpcError) as error:
            stub.Rank(make_request(5, 2, request_id=f"x{i}", surface=f"nope-{i}"), timeout=10)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    def outcome(response: pb.RankResponse, outcome_id: str, late: bool = False) -> pb.ReportOutcomeResponse:
        request = pb.ReportOutcomeRequest(event_id=response.event_id, item_id=response.slate[0].item_id,
                                          outcome="click", value=1.0, outcome_id=outcome_id)
        if late:  # occurred after the attribution window closed: acknowledged, not attributed
            request.occurred_at.FromNanoseconds(time.time_ns() + 3_600 * 10**9)
        return stub.ReportOutcome(request, timeout=10)

    assert all(outcome(r, f"o{i}").attributed for i, r in enumerate(responses[:10]))
    assert not any(outcome(r, f"late{i}", late=True).attributed for i, r in enumerate(responses[10:15]))
    assert outcome(responses[0], "o0").duplicate
    for i in range(2):
        with pytest.raises(grpc.RpcError) as error:
            stub.ReportOutcome(pb.ReportOutcomeRequest(event_id=f"{i:032x}", outcome="click", value=1.0), timeout=10)
        assert error.value.code() is grpc.StatusCode.NOT_FOUND
    channel.close()

    # The log writer writes on its own thread, and each worker's state sampler sets its gauges on its own tick: wait
    # (bounded) until what was queued is on disk and the learner lag has been sampled since.
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(metrics_address)
        if value(samples, "recsys_rl_log_queue_depth") == 0 and value(samples, "recsys_rl_log_written_bytes_total") \
                and ("recsys_rl_learner_lag_seconds", (("surface", "default"),)) in samples:
            break
        assert time.monotonic() < deadline, "the log queue did not drain (or the lag was not sampled) within 10 s"

    # Rank: every call counted once, by surface, mode and code; the histogram's buckets agree with its count.
    assert total(samples, "recsys_rl_rank_seconds_count", surface="default", code="OK") == N_DEFAULT
    default_fallbacks = value(samples, "recsys_rl_rank_seconds_count", surface="default", mode="baseline_fallback",
                              code="OK")
    assert total(samples, "recsys_rl_fallbacks_total", surface="default") == default_fallbacks
    assert value(samples, "recsys_rl_rank_seconds_count", surface="tight", mode="baseline_fallback",
                 code="OK") == N_TIGHT
    # A 1 ns budget has passed by the time the handler runs: "queued" (ranker.admission) - or "deadline" when the
    # request was not stamped on arrival; never another reason, and each fallback counted once.
    tight_reasons = {dict(labels)["reason"]: v for (name, labels), v in samples.items()
                     if name == "recsys_rl_fallbacks_total" and dict(labels).get("surface") == "tight" and v}
    assert set(tight_reasons) <= {"queued", "deadline"} and sum(tight_reasons.values()) == N_TIGHT
    assert value(samples, "recsys_rl_rank_seconds_count", surface="unknown", mode="none",
                 code="INVALID_ARGUMENT") == N_UNKNOWN  # the unknown surfaces' names minted no series
    assert not any(dict(labels).get("surface", "").startswith("nope") for _, labels in samples)
    assert value(samples, "recsys_rl_rank_seconds_bucket", surface="tight", mode="baseline_fallback", code="OK",
                 le="+Inf") == N_TIGHT

    # Slots, exploration and the smallest propensity of each decision.
    assert value(samples, "recsys_rl_slots_total", surface="default") == N_DEFAULT * SLATE
    explored = sum(slot.explored for r in responses for slot in r.slate)
    assert value(samples, "recsys_rl_explored_slots_total", surface="default") == explored
    assert value(samples, "recsys_rl_min_propensity_count", surface="default") == N_DEFAULT
    smallest = sorted(min(slot.propensity for slot in r.slate) for r in responses)
    assert value(samples, "recsys_rl_min_propensity_bucket", surface="default", le="0.99") == sum(
        p <= 0.99 for p in smallest)
    assert value(samples, "recsys_rl_exploration_cap", surface="default") == pytest.approx(0.2)

    # ReportOutcome: by status code; outcomes by surface and result.
    assert value(samples, "recsys_rl_report_outcome_seconds_count", code="OK") == 16
    assert value(samples, "recsys_rl_report_outcome_seconds_count", code="NOT_FOUND") == 2
    assert value(samples, "recsys_rl_outcomes_total", surface="default", result="attributed") == 10
    assert value(samples, "recsys_rl_outcomes_total", surface="default", result="unattributed") == 5
    assert value(samples, "recsys_rl_outcomes_total", surface="default", result="duplicate") == 1

    # Process state: models, learner lag, guardrail, the log's health.
    assert value(samples, "recsys_rl_model_info", surface="default", version=responses[-1].policy_version) == 1
    assert value(samples, "recsys_rl_model_age_seconds", surface="default") >= 0
    assert ("recsys_rl_learner_lag_seconds", (("surface", "default"),)) in samples
    assert value(samples, "recsys_rl_guardrail_status", surface="default", status="none") == 1
    assert value(samples, "recsys_rl_guardrail_status", surface="default", status="failed") == 0
    assert value(samples, "recsys_rl_log_write_errors_total") == 0
    assert value(samples, "recsys_rl_decisions_unlogged_total") == 0

    # Multiprocess mode: the serving processes' files under the data dir (the workers', with the default
    # --workers N > 1; the server's own with one); the previous run's file was removed at start.
    files = sorted(p.name for p in (data_dir / "run" / "metrics").iterdir())
    assert "counter_999999.db" not in files
    workers = data_dir / "run" / "workers.json"
    pids = json.loads(workers.read_text())["pids"].values() if workers.exists() else [process.pid]
    assert all(any(name.startswith(f"counter_{pid}") for name in files) for pid in pids), (pids, files)

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
