"""The item catalog on a real server (127.0.0.1:0): CatalogService on the admin listener, ids-only Rank requests
completed from it, its versions in the decision log, restarts, concurrent upserts and bad input."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import polars as pl
import pytest

from logging_schema.reader import read_log
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from recsys_rl.caps.devcerts import AdminCredentials
from recsys_rl.cli import main
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from tests.helpers import VIEWER, admin_channel, make_request

N, SLATE = 12, 4
CONFIG = ServiceConfig(surfaces={"default": SurfaceConfig(
    exploration_cap=0.5, exploration=ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.5),
    model=ModelConfig(learn=False), decision_budget_ms=60_000)}, seed=5)


def _full_request(request_id: str) -> pb.RankRequest:
    request = make_request(N, SLATE, request_id=request_id)
    for i, candidate in enumerate(request.candidates):
        candidate.embedding.extend([0.5 * i, 1.0 - 0.1 * i])
    return request


def _ids_only(request: pb.RankRequest) -> pb.RankRequest:
    ids_only = pb.RankRequest()
    ids_only.CopyFrom(request)
    ids_only.ClearField("candidates")
    for candidate in request.candidates:
        ids_only.candidates.add(item_id=candidate.item_id, baseline_score=candidate.baseline_score)
    return ids_only


def _items(request: pb.RankRequest) -> list[catalog_pb.CatalogItem]:
    return [catalog_pb.CatalogItem(item_id=c.item_id, features=c.features, embedding=c.embedding)
            for c in request.candidates]


def _catalog(running: object) -> catalog_grpc.CatalogServiceStub:
    return catalog_grpc.CatalogServiceStub(running.admin_channel)  # type: ignore[attr-defined]


def _slate(reply: pb.RankResponse) -> list[tuple[str, float, float]]:
    return [(s.item_id, s.propensity, s.score) for s in reply.slate]


def test_ids_only_and_full_feature_requests_decide_identically_and_log_the_same_candidates(
        start_server, tmp_path: Path) -> None:
    running = start_server(CONFIG, data_dir=tmp_path / "data", learner="off")
    catalog = _catalog(running)
    assert catalog.GetCatalog(catalog_pb.GetCatalogRequest(), timeout=10).version == ""
    without = running.stub.Rank(_full_request("before"), timeout=10)  # no catalog yet: as always
    upserted = catalog.UpsertItems(iter([catalog_pb.UpsertItemsRequest(items=_items(_full_request("x"))[:5]),
                                         catalog_pb.UpsertItemsRequest(items=_items(_full_request("x"))[5:])]),
                                   timeout=10)
    assert (upserted.upserted, upserted.count) == (N, N)
    described = catalog.GetCatalog(catalog_pb.GetCatalogRequest(), timeout=10)
    assert (described.version, described.count, described.dimension) == (upserted.version, N, 2)

    for r in range(30):
        full = running.stub.Rank(_full_request(f"r{r}"), timeout=10)
        ids_only = running.stub.Rank(_ids_only(_full_request(f"r{r}")), timeout=10)
        assert _slate(full) == _slate(ids_only)
        assert full.slate_propensity == ids_only.slate_propensity
    # An override: what the request sends wins per feature name, the rest comes from the catalog.
    override = _ids_only(_full_request("override"))
    override.candidates[0].features.numeric["price"] = 99.0
    running.stub.Rank(override, timeout=10)
    running.stop()

    events = read_log(tmp_path / "data" / "logs").decisions
    assert events[0].catalog_version == "" and events[0].request_id == "before" and without.slate
    pairs = events[1:61]
    assert {e.catalog_version for e in pairs} == {upserted.version}
    for full, ids_only in zip(pairs[::2], pairs[1::2], strict=True):
        assert full.request_id == ids_only.request_id
        assert list(full.candidates) == list(ids_only.candidates)  # replay sees the features that were served
        assert list(ids_only.candidates[3].embedding) == pytest.approx([1.5, 0.7])
    first = events[-1].candidates[0]
    assert first.features.numeric["price"] == 99.0 and first.features.categorical["topic"] == "t0"
    assert list(first.features.tags) == ["tag0"]


def test_unknown_ids_and_bad_items_are_refused_naming_the_field_and_nothing_is_applied(
        start_server, tmp_path: Path, admin_credentials: AdminCredentials) -> None:
    running = start_server(CONFIG, data_dir=tmp_path / "data", learner="off")
    catalog = _catalog(running)
    good = catalog.UpsertItems(iter([catalog_pb.UpsertItemsRequest(items=_items(_full_request("x")))]), timeout=10)

    unknown = _ids_only(_full_request("unknown"))
    unknown.candidates.add(item_id="not-in-catalog", baseline_score=0.5)
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.Rank(unknown, timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(f"candidates[{N}].item_id: item 'not-in-catalog' is not in the catalog")

    def item(item_id: str, embedding: list[float], price: float = 1.0) -> catalog_pb.CatalogItem:
        made = catalog_pb.CatalogItem(item_id=item_id, embedding=embedding)
        made.features.numeric["price"] = price
        return made

    bad_calls = {
        "requests[1].items[0].embedding: item 'b' has 3 values; the catalog's dimension is 2":
            [[item("a", [1, 2])], [item("b", [1, 2, 3])]],
        "requests[0].items[1].embedding: item 'b': values must be finite": [[item("a", [1, 2]), item("b", [1, NAN])]],
        "requests[1].items[0].item_id: item 'a' appears twice in this call": [[item("a", [1, 2])], [item("a", [1, 2])]],
        "requests[0].items[0].item_id: must not be empty": [[item("", [1, 2])]],
        "requests[0].items[0].features.numeric['price']: item 'a': must be finite": [[item("a", [1, 2], INF)]],
    }
    for expected, batches in bad_calls.items():
        with pytest.raises(grpc.RpcError) as bad:
            catalog.UpsertItems(iter([catalog_pb.UpsertItemsRequest(items=b) for b in batches]), timeout=10)
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.details().startswith(expected), bad.value.details()
    assert catalog.GetCatalog(catalog_pb.GetCatalogRequest(), timeout=10).version == good.version  # nothing applied
    got = catalog.GetItems(catalog_pb.GetItemsRequest(item_ids=["a", "item-1"]), timeout=10)
    assert [i.item_id for i in got.items] == ["item-1"] and list(got.missing_item_ids) == ["a"]

    viewer = catalog_grpc.CatalogServiceStub(admin_channel(running.admin_address, admin_credentials, VIEWER))
    assert viewer.GetCatalog(catalog_pb.GetCatalogRequest(), timeout=10).version == good.version
    with pytest.raises(grpc.RpcError) as denied:
        viewer.UpsertItems(iter([catalog_pb.UpsertItemsRequest(items=[item("z", [1, 2])])]), timeout=10)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    anonymous = catalog_grpc.CatalogServiceStub(admin_channel(running.admin_address, admin_credentials, None))
    with pytest.raises(grpc.RpcError) as unauthenticated:
        anonymous.DeleteItems(catalog_pb.DeleteItemsRequest(item_ids=["item-1"]), timeout=10)
    assert unauthenticated.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert running.stub.Rank(_ids_only(_full_request("still-serving")), timeout=10).slate  # the server serves on


NAN, INF = float("nan"), float("inf")


def test_the_catalog_survives_a_restart_and_a_delete_is_a_new_version(start_server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    running = start_server(CONFIG, data_dir=data, learner="off")
    _catalog(running).UpsertItems(iter([catalog_pb.UpsertItemsRequest(items=_items(_full_request("x")))]),
                                  timeout=10)
    deleted = _catalog(running).DeleteItems(catalog_pb.DeleteItemsRequest(item_ids=["item-0", "never"]), timeout=10)
    assert (deleted.deleted, deleted.count) == (1, N - 1)
    running.stop()

    restarted = start_server(CONFIG, data_dir=data, learner="off")
    described = _catalog(restarted).GetCatalog(catalog_pb.GetCatalogRequest(), timeout=10)
    assert (described.version, described.count) == (deleted.version, N - 1)
    request = _ids_only(_full_request("after-restart"))
    del request.candidates[0]
    full = _full_request("after-restart")
    del full.candidates[0]
    assert _slate(restarted.stub.Rank(request, timeout=10)) == _slate(restarted.stub.Rank(full, timeout=10))


def test_upserts_during_rank_never_serve_a_half_applied_version(start_server, tmp_path: Path) -> None:
    """Each version sets feature ``generation`` = k on every item: a decision's candidates must all agree, and with
    the version it logged."""
    running = start_server(CONFIG, data_dir=tmp_path / "data", learner="off")
    catalog = _catalog(running)
    generation_of: dict[str, float] = {}

    def upsert(generation: int) -> None:
        items = _items(_full_request("x"))
        for item in items:
            item.features.numeric["generation"] = float(generation)
        # Two batches: a version made of the first alone would show as mixed generations.
        reply = catalog.UpsertItems(iter([catalog_pb.UpsertItemsRequest(items=items[:6]),
                                          catalog_pb.UpsertItemsRequest(items=items[6:])]), timeout=10)
        generation_of[reply.version] = float(generation)

    upsert(0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def rank(thread: int) -> None:
        r = 0
        while not stop.is_set():
            try:
                running.stub.Rank(_ids_only(_full_request(f"t{thread}-{r}")), timeout=10)
            except grpc.RpcError as exc:  # reported below: the test must fail, not hang
                errors.append(exc)
                return
            r += 1

    threads = [threading.Thread(target=rank, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    try:
        for generation in range(1, 16):
            upsert(generation)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors
    running.stop()
    events = read_log(tmp_path / "data" / "logs").decisions
    seen = set()
    for event in events:
        generations = {c.features.numeric["generation"] for c in event.candidates}
        assert generations == {generation_of[event.catalog_version]}, event.request_id
        seen.add(event.catalog_version)
    assert len(seen) > 3  # decisions did run while the versions changed


def test_catalog_load_cli_reads_a_parquet_file_and_a_running_server_adopts_it(start_server, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]
                                                                              ) -> None:
    data = tmp_path / "data"
    running = start_server(CONFIG, data_dir=data, learner="off")
    full = _full_request("cli")
    rows = [{"item_id": c.item_id, "price": c.features.numeric["price"], "topic": c.features.categorical["topic"],
             "tags": list(c.features.tags), "embedding": list(c.embedding)} for c in full.candidates]
    good = tmp_path / "items.parquet"
    pl.DataFrame(rows).write_parquet(good)
    assert main(["catalog", "load", "--data-dir", str(data), str(good)]) == 0
    assert f"{N} items loaded" in capsys.readouterr().out

    deadline = time.monotonic() + 5  # the server adopts it on its watcher tick (0.25 s), no restart
    while _catalog(running).GetCatalog(catalog_pb.GetCatalogRequest(), timeout=10).count != N:
        assert time.monotonic() < deadline, "the running server did not adopt the loaded version"
        time.sleep(0.05)
    adopted = running.stub.Rank(_ids_only(full), timeout=10)
    assert _slate(adopted) == _slate(running.stub.Rank(full, timeout=10))

    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"item_id": ["a", "b"], "embedding": [[0.1, 0.2], [0.3, float("nan")]]}).write_parquet(bad)
    assert main(["catalog", "load", "--data-dir", str(data), str(bad)]) == 2
    assert capsys.readouterr().err.strip() == "row 1: embedding: item 'b': values must be finite (no NaN or infinity)"
    no_id = tmp_path / "no_id.parquet"
    pl.DataFrame({"id": ["a"], "when": [[1]]}).write_parquet(no_id)
    assert main(["catalog", "load", "--data-dir", str(data), str(no_id)]) == 2
    assert capsys.readouterr().err.strip().startswith("item_id: ")
    assert _catalog(running).GetCatalog(catalog_pb.GetCatalogRequest(), timeout=10).count == N  # nothing applied
