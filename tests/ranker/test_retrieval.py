"""Retrieval on a real server (127.0.0.1:0): a Rank that asks for retrieval gets items from the catalog's faiss
index, merged after the host's candidates; the decision log records the index, its catalog version and the search
parameters; exploration outside the retrieved set logs its exact propensities; bad retrieval input is refused
naming the field while the server keeps serving."""

from __future__ import annotations

import math
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

N_ITEMS, DIM, K, SLATE = 400, 8, 20, 5
CAP, SHARE = 0.4, 0.5


def _config(retrieval: RetrievalConfig) -> ServiceConfig:
    explore = ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.4)
    return ServiceConfig(surfaces={
        "default": SurfaceConfig(exploration_cap=CAP, exploration=explore, model=ModelConfig(learn=False),
                                 decision_budget_ms=60_000, retrieval=retrieval),
        "plain": SurfaceConfig(name="plain", model=ModelConfig(learn=False), decision_budget_ms=60_000),
    }, seed=11)


def _vectors() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(N_ITEMS, DIM)).astype(np.float32)


def _load_catalog(running: object) -> str:
    vectors = _vectors()
    items = []
    for i in range(N_ITEMS):
        item = catalog_pb.CatalogItem(item_id=f"c{i:04d}", embedding=vectors[i].tolist())
        item.features.numeric["price"] = float(i % 7)
        item.features.categorical["topic"] = f"t{i % 5}"
        items.append(item)
    stub = catalog_grpc.CatalogServiceStub(running.admin_channel)  # type: ignore[attr-defined]
    return stub.UpsertItems(iter([catalog_pb.UpsertItemsRequest(items=items)]), timeout=30).version


def _request(request_id: str, query: np.ndarray, *, size: int = K, host: tuple[str, ...] = ()) -> pb.RankRequest:
    request = pb.RankRequest(request_id=request_id, surface="default", user_id="u1", slate_size=SLATE)
    request.retrieval.size = size
    request.retrieval.query_embedding.extend(query.tolist())
    for item_id in host:
        candidate = request.candidates.add(item_id=item_id, baseline_score=100.0)
        candidate.features.numeric["price"] = 1.0
    return request


def _rank_when_indexed(stub: object, request: pb.RankRequest) -> pb.RankResponse:
    """The index of a version upserted through this server is built in the background: poll until it serves."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return stub.Rank(request, timeout=10)  # type: ignore[attr-defined]
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_retrieval_ranks_catalog_items_after_the_hosts_and_logs_the_index_and_search_params(
        start_server, tmp_path: Path) -> None:
    running = start_server(_config(RetrievalConfig(index="ivf", nlist=4, nprobe=2, exact_below=0, size=K)),
                           data_dir=tmp_path / "data", learner="off")
    version = _load_catalog(running)
    vectors = _vectors()
    query = vectors[17] + 0.1
    exact_top = [f"c{i:04d}" for i in np.argsort(-(vectors @ query), kind="stable")[:K]]
    host = ("host-only", exact_top[0])  # the second is also retrieved: kept where the host put it, not repeated
    reply = _rank_when_indexed(running.stub, _request("r0", query, host=host))
    assert len(reply.slate) == SLATE
    for r in range(1, 20):
        reply = running.stub.Rank(_request(f"r{r}", query, host=host), timeout=10)
        assert len(reply.slate) == SLATE and reply.slate_propensity > 0
    running.stop()

    events = read_log(tmp_path / "data" / "logs").decisions
    assert len(events) == 20
    for event in events:
        logged = event.retrieval
        assert (logged.index_version, logged.catalog_version, logged.index_type) == (
            f"{version}/ivfflat4", version, "ivf")
        assert (logged.size, logged.nlist, logged.nprobe, logged.ef_search) == (K, 4, 2, 0)
        assert (logged.host_candidates, logged.outside_candidates, logged.outside_share) == (2, 0, 0.0)
        assert list(logged.query_embedding) == pytest.approx(query.tolist())
        assert event.catalog_version == version
        ids = [c.item_id for c in event.candidates]
        assert ids[:2] == list(host) and len(ids) == len(set(ids)) == 2 + logged.retrieved_candidates
        retrieved = ids[2:]
        assert set(retrieved) <= {f"c{i:04d}" for i in range(N_ITEMS)}  # from the catalog, completed from it
        ips = [float(vectors[int(i[1:])] @ query) for i in retrieved]
        assert ips == sorted(ips, reverse=True)  # by descending inner product, as their baseline scores say
        assert [c.baseline_score for c in event.candidates[2:]] == pytest.approx(ips, rel=1e-5)
        assert list(event.candidates[3].embedding) == pytest.approx(vectors[int(retrieved[1][1:])].tolist())
        assert event.candidates[3].features.categorical["topic"] == f"t{int(retrieved[1][1:]) % 5}"
        recall = len((set(retrieved) | {exact_top[0]}) & set(exact_top)) / K
        assert recall >= 0.5  # 2 of 4 lists probed on 400 items: a coarse index, but it finds the query's region
        assert {s.item_id for s in event.slate} <= set(ids)


def test_outside_exploration_logs_exact_propensities_for_items_beyond_the_retrieved_set(
        start_server, tmp_path: Path) -> None:
    running = start_server(_config(RetrievalConfig(index="exact", size=K, outside_share=SHARE)),
                           data_dir=tmp_path / "data", learner="off")
    _load_catalog(running)
    query = _vectors()[3]
    _rank_when_indexed(running.stub, _request("warm", query))
    for r in range(60):
        running.stub.Rank(_request(f"r{r}", query), timeout=10)
    running.stop()

    q = SHARE * CAP
    outside_seen = 0
    for event in read_log(tmp_path / "data" / "logs").decisions:
        logged = event.retrieval
        assert logged.outside_share == SHARE and logged.outside_pool == N_ITEMS - K
        inside = logged.host_candidates + logged.retrieved_candidates
        assert len(event.candidates) == inside + logged.outside_candidates
        remaining = logged.outside_pool
        product = 1.0
        for slot in event.slate:
            assert slot.outside_probability == pytest.approx(q)
            assert slot.exploration_mass <= CAP + 1e-12  # the cap bounds inside and outside exploration together
            if slot.candidate_index >= inside:  # drawn outside: uniform over the catalog items left outside
                assert slot.propensity == pytest.approx(q / remaining) and slot.explored
                remaining -= 1
                outside_seen += 1
            else:  # (1 - q) of the inside draw, capped at (cap - q) / (1 - q): at most 1 - q for the greedy item
                assert 0 < slot.propensity <= 1 - q + 1e-12
            product *= slot.propensity
        assert event.slate_propensity == pytest.approx(product)
    # 61 slates of 5 slots at q = 0.2: P(no outside slot at all) = 0.8^305 ~ 1e-30
    assert outside_seen > 0


def test_bad_retrieval_input_is_refused_naming_the_field_and_the_server_keeps_serving(
        start_server, tmp_path: Path) -> None:
    running = start_server(_config(RetrievalConfig(size=K)), data_dir=tmp_path / "data", learner="off")
    query = _vectors()[0]
    with pytest.raises(grpc.RpcError) as empty_catalog:
        running.stub.Rank(_request("none", query), timeout=10)
    assert empty_catalog.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    _load_catalog(running)
    _rank_when_indexed(running.stub, _request("warm", query))
    nan = query.copy()
    nan[2] = math.nan
    bad = {
        "retrieval.size: must be positive": _request("neg", query, size=-1),
        "retrieval.size: 20000 retrieved": _request("big", query, size=20_000),
        "retrieval.query_embedding: has 3 values; the catalog's dimension is 8": _request("dim", query[:3]),
        "retrieval.query_embedding[2]: must be finite": _request("nan", nan),
        "retrieval.query_embedding: must not be empty without a user_id": _request("empty", query[:0]),
        "slate_size: 5 is larger than the 3 candidates": _request("small", query, size=3),
    }
    bad["retrieval.query_embedding: must not be empty without a user_id"].user_id = ""  # with one: kept query
    for message, request in bad.items():
        with pytest.raises(grpc.RpcError) as refused:
            running.stub.Rank(request, timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, message
        assert refused.value.details().startswith(message), refused.value.details()
    plain = _request("plain", query)
    plain.surface = "plain"
    with pytest.raises(grpc.RpcError) as no_retrieval:
        running.stub.Rank(plain, timeout=10)
    assert no_retrieval.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "retrieval: surface 'plain' has no [surfaces.plain.retrieval]" in no_retrieval.value.details()
    assert len(running.stub.Rank(_request("after", query), timeout=10).slate) == SLATE


def test_propensity_truth_with_outside_exploration_over_a_real_server(start_server, tmp_path: Path) -> None:
    """3000 identical retrieval requests (only request_id, hence the draw, differs) on a 12-item catalog, K = 4,
    slate 3, cap 0.5, outside_share 0.6. Every catalog item has positive probability at every slot (epsilon-greedy
    inside, uniform outside), so E[1/p] at slot k is the 12 - k items left (5 standard errors); the top slot's
    empirical item frequencies match its logged propensities (chi-square, alpha = 0.001, fixed seed)."""
    from collections import Counter

    from scipy import stats

    from recsys_rl.catalog.v1 import catalog_service_pb2 as c

    n_items, k, slate, n_requests = 12, 4, 3, 3000
    retrieval = RetrievalConfig(size=k, outside_share=0.6)
    config = ServiceConfig(surfaces={"default": SurfaceConfig(
        exploration_cap=0.5, exploration=ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.5),
        model=ModelConfig(learn=False), decision_budget_ms=60_000, retrieval=retrieval)}, seed=11)
    running = start_server(config, data_dir=tmp_path / "data", learner="off")
    vectors = np.random.default_rng(5).normal(size=(n_items, 2))
    stub = catalog_grpc.CatalogServiceStub(running.admin_channel)
    stub.UpsertItems(iter([c.UpsertItemsRequest(items=[c.CatalogItem(item_id=f"c{i}", embedding=vectors[i].tolist())
                                                       for i in range(n_items)])]), timeout=10)

    def request(request_id: str) -> pb.RankRequest:
        made = pb.RankRequest(request_id=request_id, surface="default", user_id="u", slate_size=slate)
        made.retrieval.size = k
        made.retrieval.query_embedding.extend([1.0, 0.5])
        return made

    _rank_when_indexed(running.stub, request("warm"))
    inverse = np.zeros((n_requests, slate))
    top_counts: Counter[str] = Counter()
    top_propensity: dict[str, float] = {}
    for i in range(n_requests):
        reply = running.stub.Rank(request(f"req-{i}"), timeout=10)
        assert reply.serving_mode == pb.SERVING_MODE_LEARNED
        inverse[i] = [1.0 / s.propensity for s in reply.slate]
        top = reply.slate[0]
        top_counts[top.item_id] += 1
        assert top_propensity.setdefault(top.item_id, top.propensity) == pytest.approx(top.propensity, abs=1e-12)
    for slot in range(slate):
        mean, sem = inverse[:, slot].mean(), inverse[:, slot].std(ddof=1) / np.sqrt(n_requests)
        assert abs(mean - (n_items - slot)) <= 5 * sem + 1e-9, (slot, mean, sem)
    assert len(top_counts) == n_items  # every catalog item was served at the top, retrieved or not
    assert sum(top_propensity.values()) == pytest.approx(1.0, abs=1e-9)
    items = sorted(top_counts)
    observed = np.array([top_counts[i] for i in items], dtype=float)
    expected = np.array([top_propensity[i] for i in items]) * n_requests
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_a_recall_target_tunes_nprobe_before_the_index_serves_and_the_log_and_metric_say_what_served(
        start_server, tmp_path: Path) -> None:
    """nprobe 1 of 8 lists is the floor; a 0.99 target raises it on the background build, before any Rank sees the
    index: every logged decision names the tuned nprobe and its measured recall, and the metric shows the same."""
    from prometheus_client import CollectorRegistry

    from recsys_rl.metrics.definitions import ServingMetrics
    from recsys_rl.metrics.sampler import StateSampler
    from recsys_rl.retrieval.index import build_index
    from recsys_rl.retrieval.tuning import tune

    config = RetrievalConfig(index="ivf", nlist=8, nprobe=1, exact_below=0, size=K, recall_target=0.99)
    running = start_server(_config(config), data_dir=tmp_path / "data", learner="off")
    version = _load_catalog(running)
    vectors = _vectors()
    expected = tune(build_index([f"c{i:04d}" for i in range(N_ITEMS)], vectors, config, version=version), vectors,
                    config)
    assert expected is not None and expected.met and expected.value > 1  # deterministic: the server's is the same
    for r in range(5):
        _rank_when_indexed(running.stub, _request(f"t{r}", vectors[r] + 0.1))
    service = running.server.service  # type: ignore[attr-defined]
    registry = CollectorRegistry()
    StateSampler(service, ServingMetrics(list(service.surfaces), registry=registry)).sample()
    assert registry.get_sample_value("recsys_rl_retrieval_recall", {"surface": "default"}) == expected.recall
    assert registry.get_sample_value("recsys_rl_retrieval_search_parameter",
                                     {"surface": "default", "parameter": "nprobe"}) == expected.value
    running.stop()

    events = read_log(tmp_path / "data" / "logs").decisions
    assert len(events) == 5
    for event in events:
        logged = event.retrieval
        assert (logged.nlist, logged.nprobe, logged.recall_target) == (8, expected.value, 0.99)
        assert logged.measured_recall == expected.recall >= 0.99
