"""Smoke test: the catalog benchmark's real entry point (a real `recsys-rl serve`, a catalog loaded with `recsys-rl
catalog load`, ids-only and full-feature Ranks over gRPC) on a tiny budget."""

from __future__ import annotations

from bench.catalog_bench import Args, markdown, run


def test_catalog_bench_runs_and_reports_the_ratio() -> None:
    args = Args(items=300, warmup=5, calls=30, rounds=1, in_process_calls=250)
    rounds, local = run(args)
    (result,) = rounds
    assert result["ids_p50_ms"] > 0 and result["full_p50_ms"] > 0 and result["ratio"] > 0
    assert result["ids_server_us"] > 0 and result["full_server_us"] > 0  # both kinds reached the decision log
    assert local["ids_p50_us"] > 0 and local["full_p50_us"] > 0
    assert result["ids_built_p50_ms"] > 0 and result["full_built_p50_ms"] > 0 and result["built_ratio"] > 0
    text = markdown(rounds, local, args)
    assert "Median ids-only / full-feature Rank p50 ratio" in text and "Median ratio with the host's building" in text


def test_a_request_built_from_the_hosts_values_equals_the_prebuilt_one() -> None:
    """The built kinds send the very requests the pre-built kinds send (as messages): only who builds them differs."""
    import numpy as np

    from bench.catalog_bench import Pair, build_request, host_items, make_requests
    from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
    from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

    held = {f"item-{i}": catalog_pb.CatalogItem(
        item_id=f"item-{i}", features=pb.Features(numeric={"price": float(i)}, categorical={"topic": f"t{i % 3}"}),
        embedding=[float(i), 0.5]).SerializeToString(deterministic=True) for i in range(50)}
    pair = Pair(make_requests(np.random.default_rng(3), held, Args(items=50, n_candidates=20), 0, 7))
    items = host_items(held)
    for kind in ("ids", "full"):
        assert build_request(pair, kind, items) == pair.requests[kind]
