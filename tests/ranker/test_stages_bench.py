"""Smoke test: the per-stage Rank benchmark's real entry point (a real server process) on a tiny budget."""

from __future__ import annotations

from bench.stages_bench import Args, breakdown, markdown, run


def test_stages_bench_times_every_stage_and_reconciles() -> None:
    args = Args(warmup=10, calls=40, rounds=1)
    result = run(args)
    assert [p["kind"] for p in result["phases"]] == ["plain", "staged"]
    assert result["phases"][0]["records"] == []  # nothing timed in a plain phase
    staged = result["phases"][1]["records"]
    ranks = [r for r in staged if r["kind"] == "rank"]
    assert len(ranks) == 40
    # Every timed function exists in this checkout's code but the writer's build from before WireRecord.
    assert result["absent"] == ["recsys_rl.serving.service:decision_to_event"]
    # Own times: one Rank's stages add up to its handler's wall time, and the main stages were seen in every Rank.
    for rank in ranks:
        assert sum(rank["stages"].values()) == rank["end"] - rank["start"]
        assert rank["stages"]["VW predict"] > 0 and rank["stages"]["validate + candidate view"] > 0
        assert rank["decode"] > 0 and rank["encode"] > 0
    writer = breakdown(staged)["writer"]
    assert writer["records"] == 40 and writer["build_us"] > 0 and writer["cpu_per_record_us"] > 0
    assert "Rank p50 / grpc.health Check p50" in markdown(result, args)
