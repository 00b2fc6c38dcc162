"""Replay of decisions that explored outside the retrieved set, over a real server (127.0.0.1:0) with
``outside_share`` > 0: ``replay --policy logged`` gives every logged propensity back bit for bit (from logged scores
and re-scored), and a what-if at another cap gives the outside formula's values, computed here by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluators.replay.run import ReplayStats, replay
from logging_schema.reader import read_log
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.retrieval.config import RetrievalConfig
from tests.ranker.test_retrieval import _load_catalog, _rank_when_indexed, _request, _vectors

CAP, SHARE, EPSILON, K = 0.4, 0.5, 0.4, 20
N_DECISIONS = 120


def _config() -> ServiceConfig:
    explore = ExplorationConfig(algorithm="epsilon_greedy", epsilon=EPSILON)
    retrieval = RetrievalConfig(index="exact", size=K, outside_share=SHARE)
    return ServiceConfig(surfaces={"default": SurfaceConfig(
        exploration_cap=CAP, exploration=explore, model=ModelConfig(learn=False), decision_budget_ms=60_000,
        retrieval=retrieval)}, seed=11)


@pytest.fixture
def outside_log(start_server: object, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    running = start_server(_config(), data_dir=data_dir, learner="off")
    _load_catalog(running)
    vectors = _vectors()
    _rank_when_indexed(running.stub, _request("warm", vectors[0]))
    for r in range(N_DECISIONS):  # a different query per request: different retrieved sets and pools
        running.stub.Rank(_request(f"r{r}", vectors[r % len(vectors)] + 0.05), timeout=10)
    running.stop()
    return data_dir


def _epsilon_greedy_capped(scores: np.ndarray, index: int, cap: float) -> float:
    """P(index) under ε-greedy over ``scores`` (greedy: the first maximum), its exploration mass capped at cap."""
    other = EPSILON / scores.size
    top = other + (1.0 - EPSILON)
    mass = 1.0 - top
    if mass > cap:
        other, top = other * cap / mass, 1.0 - cap
    return top if index == int(np.argmax(scores)) else other


def test_logged_replay_reproduces_every_outside_and_inside_propensity_bit_for_bit(outside_log: Path) -> None:
    events = [e for e in read_log(outside_log / "logs").decisions if e.slate]
    outside_slots = sum(s.candidate_index >= e.retrieval.host_candidates + e.retrieval.retrieved_candidates
                        for e in events for s in e.slate)
    assert len(events) == N_DECISIONS + 1 and outside_slots > 20  # 605 slots at q = 0.2: ~120 expected
    for logged_scores in (True, False):  # from the logged scores, and re-scored by the served model
        stats = ReplayStats()
        table = replay(outside_log, "logged", config=_config(), progress=False, stats=stats,
                       logged_scores=logged_scores)
        assert table.height == 5 * len(events)
        assert (table["pscore"] == table["target_pscore"]).all(), table.filter(
            table["pscore"] != table["target_pscore"]).head()
        assert stats.rescored == (0 if logged_scores else len(events)) and stats.target_fallbacks == 0


def test_a_what_if_cap_gives_the_outside_formula(outside_log: Path) -> None:
    cap = 0.2
    q = SHARE * cap
    cap_in = (cap - q) / (1.0 - q)
    table = replay(outside_log, f"logged@cap={cap}", config=_config(), progress=False)
    got = dict(zip(zip(table["event_id"], table["position"]), table["target_pscore"], strict=True))
    checked_outside = 0
    for event in read_log(outside_log / "logs").decisions:
        if not event.slate:
            continue
        n_inside = event.retrieval.host_candidates + event.retrieval.retrieved_candidates
        scores = np.array(event.candidate_scores)
        remaining_inside = list(range(n_inside))
        remaining_outside = event.retrieval.outside_pool
        for k, slot in enumerate(event.slate):
            if slot.candidate_index >= n_inside:
                expected = q / remaining_outside
                remaining_outside -= 1
                checked_outside += 1
            else:
                at = remaining_inside.index(slot.candidate_index)
                expected = (1.0 - q) * _epsilon_greedy_capped(scores[remaining_inside], at, cap_in)
                remaining_inside.remove(slot.candidate_index)
            assert got[(event.event_id, k)] == pytest.approx(expected, rel=1e-12), (event.event_id, k)
    assert checked_outside > 20


def test_mips_columns_refuse_decisions_that_explored_outside_the_retrieved_set(outside_log: Path) -> None:
    """Their outside draws range over catalog items the log does not list: no embedding sum can be formed."""
    from recsys_rl.errors import InvalidInput

    with pytest.raises(InvalidInput, match="explored outside the retrieved set") as caught:
        replay(outside_log, "logged", config=_config(), progress=False, embedding="kmeans:2")
    assert caught.value.field == "--embedding"
