"""Smoke test: the publish-cadence bench's real entry point (real `recsys-rl serve --workers 2`, its learner, an
asyncio client) on a tiny budget: a server publishing every few decisions publishes during the timed phase, one with
a huge publish_every does not, and the report names both."""

from __future__ import annotations

from bench.publish_bench import Args, markdown, run


def test_publish_bench_runs_and_counts_the_versions_published_during_the_phase() -> None:
    args = Args(callers=4, warmup_s=4.0, phase_s=1.5, rounds=1, publish_every=(20, 10**6), attribution_window_s=0.5,
                requests=50)
    results = run(args)
    (frequent,), (never,) = results[20], results[10**6]
    assert frequent["rate"] > 0 and never["rate"] > 0 and frequent["p99"] >= frequent["p50"] > 0
    assert frequent["published"] >= 1 and never["published"] == 0
    text = markdown(results, args)
    assert "| 20 |" in text and "| 1,000,000 |" in text and "p99 at publish_every 20 / at 1,000,000" in text
