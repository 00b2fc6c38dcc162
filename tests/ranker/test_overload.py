"""Overload: a Rank that waited past its decision budget gets the baseline at once (logged as served); past the
server's queue limit, with others waiting behind it, it is refused RESOURCE_EXHAUSTED and nothing is logged; the
server keeps serving after.

The queue is forced, not hoped for: one handler thread, and a scorer that blocks the first request until the
others are in the executor's queue (``StampingExecutor.queue_depth``) and have waited the time under test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from logging_schema.reader import read_log
from ranker.admission import StampingExecutor, queued_since
from ranker.server import RankingServer
from recsys_rl.config import ServiceConfig, default_config
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.serving.service import DecisionService
from tests.helpers import make_request

BUDGET_MS = 20.0
QUEUED = 6  # requests that wait behind the blocked one
TIMEOUT_S = 30.0  # every wait in these tests is bounded by this


class BlockingScorer:
    """The surface's real bandit, except that the first ``score`` blocks until released (the forced queue)."""

    def __init__(self, bandit: object) -> None:
        self.bandit = bandit
        self.entered = threading.Event()
        self.release = threading.Event()

    def score(self, request: pb.RankRequest) -> np.ndarray:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(TIMEOUT_S), "the test never released the blocked scorer"
        return self.bandit.score(request)  # type: ignore[attr-defined]

    def validate(self, request: pb.RankRequest) -> None:
        self.bandit.validate(request)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:  # hot_items, cache, ... as the bandit has them
        return getattr(self.bandit, name)


@dataclass
class Served:
    server: RankingServer
    service: DecisionService
    stub: pb_grpc.RankingServiceStub
    scorer: BlockingScorer
    data_dir: Path


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    running: list[tuple[RankingServer, grpc.Channel]] = []

    def start(*, max_queue_wait_ms: float | None) -> Served:
        base = default_config()
        surfaces = {name: replace(s, decision_budget_ms=BUDGET_MS) for name, s in base.surfaces.items()}
        service = DecisionService(ServiceConfig(surfaces=surfaces, seed=base.seed), tmp_path, learner="off",
                                  watch_models=False)
        server = RankingServer(service, max_workers=1, max_queue_wait_ms=max_queue_wait_ms).start()
        assert server.port != 0
        policy = service._entry("default").policy  # noqa: SLF001 - the scorer seam of the forced queue
        scorer = BlockingScorer(policy.bandit)
        policy.swap_model(scorer, policy.policy_version)  # type: ignore[arg-type]
        channel = grpc.insecure_channel(server.address)
        running.append((server, channel))
        return Served(server, service, pb_grpc.RankingServiceStub(channel), scorer, tmp_path)

    yield start
    for server, channel in running:
        channel.close()
        server.stop(grace_s=5.0)


def _wait_until(condition: object, what: str) -> None:
    """Polls a condition the server reaches by itself (no event to wait on), bounded by TIMEOUT_S."""
    give_up = time.monotonic() + TIMEOUT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.001)


def _force_queue(served: Served, wait_s: float) -> tuple[grpc.Future, list[grpc.Future]]:
    """One request blocks the only handler thread; QUEUED more wait behind it for at least ``wait_s``."""
    first = served.stub.Rank.future(make_request(request_id="first"), timeout=TIMEOUT_S)
    assert served.scorer.entered.wait(TIMEOUT_S)
    queued = [served.stub.Rank.future(make_request(request_id=f"q{i}"), timeout=TIMEOUT_S) for i in range(QUEUED)]
    _wait_until(lambda: served.server.executor.queue_depth >= QUEUED, "the requests to queue")
    queued_at = time.perf_counter()
    # The time under test: every queued request has now waited at least wait_s (they were submitted before).
    while (left := queued_at + wait_s - time.perf_counter()) > 0:
        time.sleep(left)
    served.scorer.release.set()
    return first, queued


def test_a_request_queued_past_its_budget_gets_the_baseline_at_once_logged_as_served(serve: object) -> None:
    served: Served = serve(max_queue_wait_ms=None)  # type: ignore[operator]
    first, queued = _force_queue(served, wait_s=2 * BUDGET_MS / 1000)
    first.result()  # the blocked one is served too (its own deadline passed while scoring: a fallback)
    responses = [future.result() for future in queued]

    expected = [f"item-{i}" for i in range(5)]  # make_request's baseline: descending baseline_score
    for response in responses:
        assert response.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK
        assert [slot.item_id for slot in response.slate] == expected
        assert response.slate_propensity == 1.0 and all(slot.propensity == 1.0 for slot in response.slate)
        assert response.fallback_reason.startswith("queued: waited ")  # the host sees why, as the log says
    assert served.service.overload_baseline == QUEUED
    assert served.service.overload_refused == 0

    after = served.stub.Rank(make_request(request_id="after"), timeout=TIMEOUT_S)  # no queue: the model serves
    assert after.serving_mode == pb.SERVING_MODE_LEARNED
    served.server.stop(grace_s=5.0)  # drains and fsyncs the log
    logged = {event.event_id: event for event in read_log(served.data_dir / "logs").decisions}
    assert len(logged) == QUEUED + 2
    for response in responses:
        event = logged[response.event_id]
        assert event.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK
        assert event.fallback_reason == response.fallback_reason
        waited_ms = float(event.fallback_reason.split()[2])
        assert waited_ms >= 2 * BUDGET_MS, event.fallback_reason
        assert [slot.item_id for slot in event.slate] == [slot.item_id for slot in response.slate]
        assert event.slate_propensity == 1.0 and all(slot.propensity == 1.0 for slot in event.slate)
    assert logged[after.event_id].fallback_reason == after.fallback_reason == ""


def test_past_the_queue_limit_requests_are_refused_and_nothing_is_logged(serve: object) -> None:
    served: Served = serve(max_queue_wait_ms=3 * BUDGET_MS)  # type: ignore[operator]
    first, queued = _force_queue(served, wait_s=4 * BUDGET_MS / 1000)
    first_response = first.result()
    *refused_futures, last = queued  # one handler thread: they run in submit order
    for future in refused_futures:  # others still waited behind each of these: refused, the backlog drains
        with pytest.raises(grpc.RpcError) as refused:
            future.result()
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "in the server's queue" in refused.value.details()
    # Nobody waited behind the last one: refusing it would drain nothing, so it gets the baseline at once.
    last_response = last.result()
    assert last_response.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK
    assert served.service.overload_refused == QUEUED - 1
    assert served.service.overload_baseline == 1

    after = served.stub.Rank(make_request(request_id="after"), timeout=TIMEOUT_S)  # the server keeps serving
    assert after.serving_mode == pb.SERVING_MODE_LEARNED
    served.server.stop(grace_s=5.0)
    logged = {event.event_id for event in read_log(served.data_dir / "logs").decisions}
    # The refused decided nothing and logged nothing.
    assert logged == {first_response.event_id, last_response.event_id, after.event_id}


def test_a_request_whose_caller_gave_up_while_queued_is_not_decided(serve: object) -> None:
    served: Served = serve(max_queue_wait_ms=None)  # type: ignore[operator]
    first = served.stub.Rank.future(make_request(request_id="first"), timeout=TIMEOUT_S)
    assert served.scorer.entered.wait(TIMEOUT_S)
    short = served.stub.Rank.future(make_request(request_id="short"), timeout=BUDGET_MS / 1000)
    with pytest.raises(grpc.RpcError) as gone:
        short.result()  # the caller's deadline passes while the request is queued
    assert gone.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    served.scorer.release.set()
    first_response = first.result()
    served.server.stop(grace_s=5.0)
    # gRPC may drop the cancelled call before a handler runs; if one runs, it refuses (counted): never a decision.
    assert served.service.overload_refused <= 1
    assert {event.event_id for event in read_log(served.data_dir / "logs").decisions} == {first_response.event_id}


def test_the_executor_hands_each_work_item_its_submit_time() -> None:
    with StampingExecutor(1) as executor:
        before = time.perf_counter()
        stamped = executor.submit(queued_since).result(timeout=TIMEOUT_S)
        assert stamped is not None and before <= stamped <= time.perf_counter()
        assert executor.queue_depth == 0
    assert queued_since() is None  # outside a work item
