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
    assert "Median ids-only / full-feature Rank p50 ratio" in markdown(rounds, local, args)
