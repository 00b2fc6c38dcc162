"""Smoke test: the shield benchmark's real entry point (two real servers, shield on/off) on a tiny budget."""

from __future__ import annotations

from bench.shield_bench import Args, markdown, run


def test_shield_bench_runs_and_reports_the_ratio() -> None:
    args = Args(blocked_ids=1_000, warmup=5, calls=30, rounds=1, in_process_calls=30)
    rounds, local, before = run(args)
    (result,) = rounds
    assert result["on_p50_ms"] > 0 and result["off_p50_ms"] > 0 and result["on_server_us"] > 0
    # The rules really act on these requests: blocked candidates and the creator cap fire in most decisions.
    assert result["fired_blocked_items"] > 0.5 and result["fired_max_per_value"] > 0.5
    assert local["on_p50_us"] > 0 and before is None
    assert "Median on/off Rank p50 ratio" in markdown(rounds, local, args)
