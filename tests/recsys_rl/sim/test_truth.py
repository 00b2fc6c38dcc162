"""The simulator's truth of a counterfactual target, on page views a real server served (recsys_rl.sim.truth)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_rl.config import ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.serving.decision import baseline_order
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import run_host
from recsys_rl.sim.truth import target_click_rate


def test_truth_of_the_served_policy_and_of_the_baseline(start_server) -> None:  # noqa: ANN001
    surface = SurfaceConfig(exploration_cap=0.0, model=ModelConfig(learn=False))  # greedy: one slate per view
    running = start_server(ServiceConfig(surfaces={"default": surface}, seed=3), learner="off")
    world = World(SimConfig(n_users=80), seed=4)
    stats = run_host(running.stub, world, n_requests=150, keep_page_views=True)
    running.stop()
    views = {r.event_id: r.page_view for r in stats.records}
    assert all(view is not None for view in views.values())

    # `logged` draws exactly the served (greedy) slate on each page view: its truth is the served click rate.
    logged = target_click_rate(running.data_dir, "logged", world, views, surface=surface, samples=3)
    assert logged.page_views == 150
    assert logged.click_rate == pytest.approx(np.mean([r.served_click_prob for r in stats.records]), rel=1e-12)

    # `baseline` orders by the host's baseline_score: computed here directly from the page views.
    expected = []
    for record in stats.records:
        view = record.page_view
        order = baseline_order(np.array([c.baseline_score for c in view.candidates]), len(record.served))
        expected.append(world.slate_click_prob(view, [view.candidates[i].item_id for i in order]))
    baseline = target_click_rate(running.data_dir, "baseline", world, views, surface=surface)
    assert baseline.click_rate == pytest.approx(float(np.mean(expected)), rel=1e-12)
    assert baseline.click_rate != pytest.approx(logged.click_rate, rel=1e-3)  # the two targets differ

    # Only the page views given count; a bad sample count names the parameter.
    some = dict(list(views.items())[:10])
    assert target_click_rate(running.data_dir, "uniform", world, some, surface=surface).page_views == 10
    with pytest.raises(ValueError, match="samples"):
        target_click_rate(running.data_dir, "uniform", world, some, surface=surface, samples=0)
