"""The simulator's truth for a counterfactual: what a target policy would really have earned on logged page views.

For each logged decision whose page view the host kept (``run_host(keep_page_views=True)``), the target policy
decides the logged request through the serving decision path (the same ``--policy`` specs and
``target_scores`` as replay), and the simulator gives the exact click probability of the slate it would draw
(``World.slate_click_prob``, computed from the page view's utilities at the time it was served). A stochastic
target is averaged over ``samples`` independent draws per page view; a greedy one (cap 0) draws the same slate
every time. The mean over page views is the truth that an off-policy estimate of that target on the same logs
should cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluators.replay.request import rank_request
from evaluators.replay.run import logged_long_term, replay_long_term
from evaluators.replay.targets import parse_policy_spec, resolve_policy
from logging_schema.reader import iter_records
from logging_schema.views import TableRecord
from recsys_rl.config import SurfaceConfig
from recsys_rl.serving.decision import target_scores
from recsys_rl.serving.exploration import sample_slate
from recsys_rl.sim.world import PageView, World


@dataclass(frozen=True)
class Truth:
    """The target's expected click rate per slate on the page views, and how many page views it averages."""

    click_rate: float
    page_views: int


def target_click_rate(data_dir: Path, spec: str, world: World, page_views: Mapping[str, PageView], *,
                      surface: SurfaceConfig, samples: int = 16, seed: int = 0) -> Truth:
    """The truth for ``spec`` over the logged decisions whose event ids are keys of ``page_views``."""
    if samples < 1:
        raise ValueError(f"samples: must be >= 1, got {samples}")
    target = resolve_policy(parse_policy_spec(spec), Path(data_dir), surface,
                            long_term=replay_long_term(Path(data_dir), surface))
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for record in iter_records(Path(data_dir) / "logs", record_type=TableRecord):
        if record.WhichOneof("event") != "decision":
            continue
        event = record.decision
        page_view = page_views.get(event.event_id)
        if page_view is None or event.surface != surface.name or not event.slate:
            continue
        request = rank_request(event)
        scored = target_scores(target.policy_for(event), request, long_term_input=logged_long_term(event))
        keys = rng.integers(0, 2**63, size=samples)
        probabilities = []
        for key in keys:
            drawn = sample_slate(scored.scores, len(event.slate), scored.explorer, draw_key=int(key))
            probabilities.append(world.slate_click_prob(page_view, [request.candidates[i].item_id
                                                                    for i in drawn.indices]))
        values.append(float(np.mean(probabilities)))
    return Truth(float(np.mean(values)) if values else float("nan"), len(values))


__all__ = ["Truth", "target_click_rate"]
