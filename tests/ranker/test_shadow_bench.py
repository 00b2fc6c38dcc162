"""Smoke test: the shadow benchmark's real entry point (three real servers) on a tiny budget."""

from __future__ import annotations

from bench.shadow_bench import Args, markdown, run


def test_shadow_bench_runs_and_reports_the_ratio() -> None:
    args = Args(warmup=5, calls=20, rounds=1)
    (result,) = run(args)
    assert result["shadow_p50_ms"] > 0 and result["live_p50_ms"] > 0 and result["shadow_added_p50_ms"] > 0
    assert "Median shadow/live p50 ratio" in markdown([result], args)
