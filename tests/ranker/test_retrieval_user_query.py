"""Retrieval by user id on a real server (127.0.0.1:0): a RankRequest without retrieval.query_embedding searches
with the query the service keeps for its user_id, the decayed mean of the catalog items the user clicked (reported
through ReportOutcome). A user who clicked one cluster's items gets that cluster back; the log records the query
searched with and that it was the kept one; a user with no kept query gets FAILED_PRECONDITION naming
retrieval.query_embedding; bad input is still INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from logging_schema.reader import read_log
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.retrieval.config import RetrievalConfig

CLUSTERS, PER_CLUSTER, DIM, K, DECAY = 4, 30, 8, 10, 0.5


def _vectors() -> np.ndarray:
    """Cluster c's items lie around 3·e_c (well apart: any mix of one cluster's items retrieves that cluster)."""
    rng = np.random.default_rng(7)
    centers = np.eye(DIM)[:CLUSTERS] * 3.0
    return np.concatenate([center + rng.normal(scale=0.3, size=(PER_CLUSTER, DIM)) for center in centers]
                          ).astype(np.float32)


def _item_id(row: int) -> str:
    return f"k{row // PER_CLUSTER}-{row % PER_CLUSTER:02d}"


def _config() -> ServiceConfig:
    return ServiceConfig(surfaces={"default": SurfaceConfig(
        exploration_cap=0.2, exploration=ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.2),
        model=ModelConfig(learn=False), decision_budget_ms=60_000,
        retrieval=RetrievalConfig(size=K, user_decay=DECAY))}, seed=3)


def _start(start_server: object, tmp_path: Path) -> object:
    """A server on tmp_path/data with the clustered catalog upserted through it."""
    running = start_server(_config(), data_dir=tmp_path / "data", learner="off")  # type: ignore[operator]
    vectors = _vectors()
    items = [catalog_pb.CatalogItem(item_id=_item_id(i), embedding=vectors[i].tolist()) for i in range(len(vectors))]
    catalog_grpc.CatalogServiceStub(running.admin_channel).UpsertItems(
        iter([catalog_pb.UpsertItemsRequest(items=items)]), timeout=30)
    return running


def _by_user(request_id: str, user_id: str, *, slate: int = 3) -> pb.RankRequest:
    request = pb.RankRequest(request_id=request_id, surface="default", user_id=user_id, slate_size=slate)
    request.retrieval.size = K
    return request


def _rank_when_indexed(stub: object, request: pb.RankRequest) -> pb.RankResponse:
    """The index of the catalog upserted through the server is built in the background: poll until it serves."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return stub.Rank(request, timeout=10)  # type: ignore[attr-defined]
        except grpc.RpcError as exc:
            if (exc.code() is not grpc.StatusCode.FAILED_PRECONDITION or "index" not in exc.details()
                    or time.monotonic() > deadline):
                raise
            time.sleep(0.05)


def test_a_user_who_clicked_one_cluster_gets_that_cluster_retrieved_by_user_id(start_server, tmp_path: Path) -> None:
    running = _start(start_server, tmp_path)
    vectors = _vectors()
    # One item of each cluster, sent by id, all shown: the user clicks the two of cluster 2 (and a 0-value view
    # of cluster 0, which is no engagement), so the kept query is their decayed mean.
    shown = [0, 2 * PER_CLUSTER + 4, PER_CLUSTER + 1, 2 * PER_CLUSTER + 9, 3 * PER_CLUSTER]
    first = pb.RankRequest(request_id="browse", surface="default", user_id="alice", slate_size=len(shown))
    first.candidates.extend(pb.Candidate(item_id=_item_id(i)) for i in shown)
    first.retrieval.size = 1  # a retrieval with a sent query: the index is built once this serves
    first.retrieval.query_embedding.extend(vectors[3 * PER_CLUSTER + 1].tolist())
    served = _rank_when_indexed(running.stub, first)
    clicks = [2 * PER_CLUSTER + 4, 2 * PER_CLUSTER + 9]
    for n, row in enumerate(clicks):
        ack = running.stub.ReportOutcome(pb.ReportOutcomeRequest(
            event_id=served.event_id, item_id=_item_id(row), outcome="click", value=1.0, outcome_id=f"c{n}"), timeout=10)
        assert ack.attributed
    running.stub.ReportOutcome(pb.ReportOutcomeRequest(event_id=served.event_id, item_id=_item_id(0),
                                                       outcome="click", value=0.0, outcome_id="v"), timeout=10)

    reply = running.stub.Rank(_by_user("again", "alice"), timeout=10)
    assert len(reply.slate) == 3
    assert all(s.item_id.startswith("k2-") for s in reply.slate), [s.item_id for s in reply.slate]

    with pytest.raises(grpc.RpcError) as unknown:  # no click reported for bob: the host must send a query
        running.stub.Rank(_by_user("new", "bob"), timeout=10)
    assert unknown.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert unknown.value.details().startswith("retrieval.query_embedding: no query is kept for user_id 'bob'")

    bad_dim = _by_user("dim", "alice")  # a sent query wins over the kept one, and is checked as before
    bad_dim.retrieval.query_embedding.extend([1.0, 2.0])
    no_user = _by_user("anon", "")
    for request, message in ((bad_dim, "retrieval.query_embedding: has 2 values; the catalog's dimension is 8"),
                             (no_user, "retrieval.query_embedding: must not be empty without a user_id")):
        with pytest.raises(grpc.RpcError) as refused:
            running.stub.Rank(request, timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(message), refused.value.details()
    assert len(running.stub.Rank(_by_user("still", "alice"), timeout=10).slate) == 3
    running.stop()

    events = {e.request_id: e for e in read_log(tmp_path / "data" / "logs").decisions}
    assert events["browse"].retrieval.query_source == "request"
    kept = (DECAY * vectors[clicks[0]].astype(np.float64) + vectors[clicks[1]]) / (DECAY + 1.0)
    for request_id in ("again", "still"):
        logged = events[request_id].retrieval
        assert logged.query_source == "user"
        assert list(logged.query_embedding) == pytest.approx(kept.tolist(), rel=1e-6)  # replay searches with it
        retrieved = [c.item_id for c in events[request_id].candidates]
        assert len(retrieved) == K and all(i.startswith("k2-") for i in retrieved)


def test_kept_queries_are_not_persisted_but_a_click_on_a_recovered_decision_feeds_them(
        start_server, tmp_path: Path) -> None:
    running = _start(start_server, tmp_path)
    vectors = _vectors()
    first = pb.RankRequest(request_id="before", surface="default", user_id="carol", slate_size=3)
    first.retrieval.size = K
    first.retrieval.query_embedding.extend(vectors[PER_CLUSTER + 5].tolist())  # cluster 1's neighbourhood
    served = _rank_when_indexed(running.stub, first)
    clicked = served.slate[0].item_id
    assert clicked.startswith("k1-")
    running.stub.ReportOutcome(pb.ReportOutcomeRequest(event_id=served.event_id, item_id=clicked, outcome="click",
                                                       value=1.0, outcome_id="a"), timeout=10)
    assert running.stub.Rank(_by_user("kept", "carol"), timeout=10).slate
    running.stop()

    # The same configuration on the same data dir: the catalog and the log are kept, the index is built at start.
    restarted = start_server(_config(), data_dir=tmp_path / "data", learner="off")
    with pytest.raises(grpc.RpcError) as forgotten:  # in memory only: the restart starts empty
        restarted.stub.Rank(_by_user("after", "carol"), timeout=10)
    assert forgotten.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no query is kept for user_id 'carol'" in forgotten.value.details()
    # The decision served before the restart was recovered with its user: a click on it feeds carol's query.
    second = served.slate[1].item_id
    assert second.startswith("k1-")  # all K retrieved items are cluster 1's (30 of them, well apart)
    ack = restarted.stub.ReportOutcome(pb.ReportOutcomeRequest(event_id=served.event_id, item_id=second,
                                                               outcome="click", value=1.0, outcome_id="b"), timeout=10)
    assert ack.attributed
    reply = restarted.stub.Rank(_by_user("fed", "carol"), timeout=10)
    assert all(s.item_id.startswith("k1-") for s in reply.slate), [s.item_id for s in reply.slate]
    restarted.stop()
    logged = {e.request_id: e for e in read_log(tmp_path / "data" / "logs").decisions}["fed"].retrieval
    assert logged.query_source == "user"
    assert list(logged.query_embedding) == pytest.approx(vectors[int(second[3:]) + PER_CLUSTER].tolist(), rel=1e-6)

