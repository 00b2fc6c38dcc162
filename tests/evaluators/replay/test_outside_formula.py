"""evaluators.replay.outside against the serving draw itself (recsys_rl.retrieval.outside), in process: for every
drawn slate, the replayed per-slot propensities equal the drawn ones bit for bit, including slates that use up the
outside pool (q_k drops to 0) and explorers other than ε-greedy."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.replay.outside import outside_propensities
from recsys_rl.retrieval.outside import plan_outside, sample_with_outside
from recsys_rl.serving.exploration import CappedExplorer, EpsilonGreedy, Softmax

CATALOG = [f"c{i}" for i in range(6)]
POSITIONS = {item_id: i for i, item_id in enumerate(CATALOG)}
CANDIDATES = ["c1", "c4", "c5", "host-only"]  # pool: c0, c2, c3; a slate of 4 (at most the candidates, as
# serving requires) can use it up
SCORES = np.array([0.2, 0.9, 0.4, 0.9])  # a tie: the greedy item is the first maximum
SLATE, CAP, SHARE = 4, 0.9, 0.95


@pytest.mark.parametrize("inner", [EpsilonGreedy(0.7), Softmax(0.3)], ids=["epsilon_greedy", "softmax"])
def test_replayed_propensities_equal_the_drawn_ones_bit_for_bit(inner: object) -> None:
    explorer = CappedExplorer(inner, CAP)  # type: ignore[arg-type]
    exhausted = 0
    for key in range(2_000):
        plan = plan_outside(CATALOG, POSITIONS, CANDIDATES, slate_size=SLATE, share=SHARE, cap=CAP, draw_key=key)
        assert plan is not None and plan.pool == 3
        scores = np.concatenate([SCORES, np.full(len(plan.item_ids), -5.0)])
        slots, _ = sample_with_outside(scores, plan, explorer, slate_size=SLATE, draw_key=key)
        replayed = outside_propensities(scores, [s.index for s in slots], explorer, CAP, share=SHARE,
                                        pool=plan.pool, n_inside=len(CANDIDATES))
        assert replayed.tolist() == [s.propensity for s in slots], key
        exhausted += len(plan.item_ids) == plan.pool
    assert exhausted > 100  # the q_k = 0 branch after the pool is used up is exercised
