"""run_host against a real ranking server on loopback (the ``start_server`` fixture in tests/conftest.py)."""

from __future__ import annotations

import math

import pytest

from logging_schema.rewards import RewardDefinition
from recsys_rl.config import ServiceConfig, SurfaceConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import run_host, to_rank_request


def test_to_rank_request_cached_and_uncached_paths_agree() -> None:
    world = World(SimConfig(n_users=10), seed=0)
    page_view = world.next_page_view()
    assert page_view is not None
    fast = to_rank_request(page_view, "r-1", "home", catalog=world.catalog)
    assert fast == to_rank_request(page_view, "r-1", "home")
    assert (fast.request_id, fast.surface, fast.user_id, fast.slate_size) == ("r-1", "home", page_view.user_id, 5)
    assert [c.item_id for c in fast.candidates] == page_view.candidate_ids
    assert dict(fast.context.categorical) == page_view.context.categorical
    first = page_view.candidates[0]
    assert dict(fast.candidates[0].features.numeric) == first.features.numeric
    assert fast.candidates[0].baseline_score == first.baseline_score
    assert list(fast.candidates[0].embedding) == pytest.approx(first.embedding)


def test_run_host_plays_the_world_through_the_server(start_server) -> None:
    server = start_server()
    world = World(SimConfig(n_users=200), seed=1)
    seen = []
    stats = run_host(server.stub, world, n_requests=300, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (300, 300) and len(seen) == 300
    assert [r.request_index for r in stats.records] == list(range(300))
    assert world.pending == 0
    for record in stats.records:
        assert len(record.served) == 5 == len(set(record.served)) == len(record.propensities)
        assert record.event_id and record.policy_version and record.serving_mode.startswith("SERVING_MODE_")
        assert all(0 < p <= 1 for p in record.propensities)
        # The oracle is the best slate there is: no served slate can beat it on the same page view.
        assert record.served_click_prob <= record.oracle_click_prob + 1e-12
        assert record.random_click_prob < record.oracle_click_prob
        assert record.clicked == (record.clicked_position is not None)
    clicks = sum(r.clicked for r in stats.records)
    assert clicks > 0
    assert stats.outcomes_reported == {"click": clicks}
    assert not stats.outcomes_unattributed
    windows = stats.windows(100)
    assert [(w.start, w.end) for w in windows] == [(0, 100), (100, 200), (200, 300)]
    assert sum(w.click_rate * (w.end - w.start) for w in windows) == pytest.approx(clicks)
    assert math.isclose(stats.click_rate, clicks / 300)
    assert len(stats.format_windows(100).splitlines()) == 4
    with pytest.raises(InvalidInput, match="size"):
        stats.windows(0)


def test_run_host_concurrent_with_dwell_and_return_visits(start_server) -> None:
    reward = RewardDefinition(weights={"click": 1.0, "dwell_seconds": 0.001, "return_visit": 1.0, "session_end": 0.0},
                              attribution_window_seconds=3600.0)
    server = start_server(ServiceConfig(surfaces={"feed": SurfaceConfig(name="feed", reward=reward)}))
    # 20 users: days end quickly, so return visits get reported within a few hundred requests.
    world = World(SimConfig(n_users=20), seed=2)
    stats = run_host(server.stub, world, n_requests=400, surface="feed", concurrency=4,
                     report_dwell=True, report_return_visit=True, report_session_end=True)
    assert [r.request_index for r in stats.records] == list(range(400))
    assert world.pending == 0
    clicks = sum(r.clicked for r in stats.records)
    assert stats.outcomes_reported["click"] == stats.outcomes_reported["dwell_seconds"] == clicks > 0
    assert stats.days_started >= 1
    assert stats.outcomes_reported["session_end"] == sum(r.session_ended for r in stats.records)
    # Every session that ended before the last day started got its return verdict.
    last_day = stats.records[-1].day
    finished_before_last_day = sum(r.session_ended and r.day < last_day for r in stats.records)
    assert stats.outcomes_reported["return_visit"] == finished_before_last_day > 0
    assert not stats.outcomes_unattributed


def test_run_host_rejects_bad_arguments(start_server) -> None:
    server = start_server()
    world = World(SimConfig(n_users=10), seed=0)
    with pytest.raises(InvalidInput, match="concurrency"):
        run_host(server.stub, world, n_requests=1, concurrency=0)
    with pytest.raises(InvalidInput, match="n_requests"):
        run_host(server.stub, world, n_requests=-1)
