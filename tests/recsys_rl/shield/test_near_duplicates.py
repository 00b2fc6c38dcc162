"""The near-duplicate rule (``near_duplicates = { max_cosine = θ }``): never violated, exact propensities, shorter
slates when the feasible set runs out, candidates without an embedding, and bad θ naming the key."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from recsys_rl.config import ConfigError, parse_config
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.candidates import CandidateInfoCache, CandidateView
from recsys_rl.serving.exploration import (CappedExplorer, EpsilonGreedy, Greedy, Softmax, sample_slate,
                                           slate_propensities)
from recsys_rl.shield import parse_shield


def _cosine(a: list[float], b: list[float]) -> float:
    """The check's own cosine (np.dot of float64), independent of the rule's code."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))


def _random_request(rng: np.random.Generator) -> pb.RankRequest:
    """Candidates in a few tight clusters (near-duplicates) plus loners, some without an embedding."""
    n, dim = int(rng.integers(2, 40)), int(rng.choice([2, 8, 32]))
    centres = rng.normal(size=(int(rng.integers(1, 6)), dim))
    request = pb.RankRequest(request_id="r", slate_size=int(rng.integers(1, 12)))
    for i in range(n):
        c = request.candidates.add(item_id=f"item-{i}", baseline_score=float(rng.normal()))
        c.features.categorical["creator"] = f"c{rng.integers(0, 4)}"
        if rng.random() < 0.1:
            continue  # no embedding
        if rng.random() < 0.7:
            vector = centres[rng.integers(0, len(centres))] + rng.normal(scale=0.15, size=dim)
        else:
            vector = rng.normal(size=dim)
        c.embedding.extend(vector.astype(np.float32).tolist())
    return request


@pytest.mark.parametrize("seed", range(3))
def test_never_violated_and_slate_only_shorter_when_nothing_is_feasible(seed: int) -> None:
    rng = np.random.default_rng(seed)
    explorers = [Greedy(), CappedExplorer(Softmax(0.5), 0.5), CappedExplorer(EpsilonGreedy(0.8), 1.0)]
    shorter = 0
    for _ in range(150):
        request = _random_request(rng)
        theta = float(rng.choice([0.5, 0.9, 0.97, 1.0]))
        table: dict = {"near_duplicates": {"max_cosine": theta}}
        if rng.random() < 0.3:
            table["max_per_value"] = {"creator": 2}
        rules = parse_shield(table)
        vectors = [list(c.embedding) for c in request.candidates]
        scores = rng.normal(size=len(vectors))
        for explorer in explorers:
            for key in range(3):
                view = CandidateView(request, cache=CandidateInfoCache())
                draw = sample_slate(scores, request.slate_size, explorer, draw_key=key,
                                    feasibility=rules.for_request(view))
                slate = draw.indices
                for a, b in itertools.combinations(slate, 2):
                    if vectors[a] and vectors[b]:
                        assert _cosine(vectors[a], vectors[b]) < theta, (slate, a, b)
                if len(slate) < min(request.slate_size, len(vectors)) and "max_per_value" not in table:
                    shorter += 1  # nothing left: every other candidate is a near-duplicate of a placed item
                    for i in set(range(len(vectors))) - set(slate):
                        assert vectors[i] and any(
                            vectors[j] and _cosine(vectors[i], vectors[j]) >= theta - 1e-9 for j in slate), i
                # Replay (a fresh shield from the protobuf request) gives the logged propensities bit for bit.
                replayed = slate_propensities(scores, slate, explorer, feasibility=rules.for_request(request))
                assert replayed.tobytes() == np.array([s.propensity for s in draw.slots]).tobytes()
                assert all(s.greedy_index not in slate[:k] for k, s in enumerate(draw.slots))
    assert shorter > 10  # the clusters do exhaust some slates: the shorter-slate path is exercised


def _clustered() -> pb.RankRequest:
    """7 candidates: 0,1,2 near-duplicates; 3,4 near-duplicates; 5 alone; 6 without an embedding."""
    request = pb.RankRequest(request_id="r", slate_size=3)
    for i, vector in enumerate([[1, 0, 0], [0.99, 0.05, 0], [0.98, 0, 0.06], [0, 1, 0], [0.05, 0.99, 0], [0, 0, 1],
                                []]):
        request.candidates.add(item_id=f"item-{i}", embedding=vector)
    return request


@pytest.mark.parametrize("cap", [0.4, 1.0])
def test_exact_propensities_sum_to_one_over_feasible_slates(cap: float) -> None:
    """Every slate enumerated: the probabilities of the slates the rule allows sum to 1, and a slate with two
    near-duplicates has probability 0; sampled propensities are replay's, and their frequencies match them."""
    request = _clustered()
    shield = parse_shield({"near_duplicates": {"max_cosine": 0.95}}).for_request(request)
    scores = np.random.default_rng(1).normal(size=7)
    explorer = CappedExplorer(Softmax(0.7), cap)
    groups = [0, 0, 0, 1, 1, 2, 3]
    total = 0.0
    probability: dict[tuple[int, ...], float] = {}
    for slate in itertools.permutations(range(7), 3):
        p = float(np.prod(slate_propensities(scores, list(slate), explorer, feasibility=shield)))
        probability[slate] = p
        total += p
        if len({groups[i] for i in slate}) < 3:
            assert p == 0.0, slate
    assert total == pytest.approx(1.0, abs=1e-12)
    draws = 4000
    counts: dict[tuple[int, ...], int] = {}
    for key in range(draws):
        draw = sample_slate(scores, 3, explorer, draw_key=key, feasibility=shield)
        counts[tuple(draw.indices)] = counts.get(tuple(draw.indices), 0) + 1
        assert draw.slate_propensity == probability[tuple(draw.indices)]
    for slate, count in counts.items():  # each observed frequency within 5 binomial standard errors
        p = probability[slate]
        assert abs(count / draws - p) <= 5 * np.sqrt(p * (1 - p) / draws) + 1e-9, (slate, count, p)


def test_fired_lists_each_removed_candidate_once_at_its_first_slot() -> None:
    request = _clustered()
    shield = parse_shield({"near_duplicates": {"max_cosine": 0.95}}).for_request(request)
    draw = sample_slate(np.array([6.0, 5, 4, 3, 2, 1, 0]), 3, Greedy(), draw_key=0, feasibility=shield)
    assert draw.indices == [0, 3, 5]
    assert shield.explain(draw.indices) == ["near_duplicates:item-1@slot1", "near_duplicates:item-2@slot1",
                                            "near_duplicates:item-4@slot2"]


def test_no_embedding_zero_embedding_and_other_dimensions_are_never_removed() -> None:
    request = pb.RankRequest(request_id="r", slate_size=5)
    for i, vector in enumerate([[1.0, 0.0], [], [0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0]]):
        request.candidates.add(item_id=f"item-{i}", embedding=vector)
    # θ = 1 removes the exact duplicate (item-4) only; item-3 has another dimension, item-1/2 no direction.
    shield = parse_shield({"near_duplicates": {"max_cosine": 1.0}}).for_request(request)
    draw = sample_slate(np.arange(5.0)[::-1].copy(), 5, Greedy(), draw_key=0, feasibility=shield)
    assert draw.indices == [0, 1, 2, 3]
    assert shield.explain(draw.indices) == ["near_duplicates:item-4@slot1"]


def test_a_pin_too_similar_to_an_earlier_item_is_skipped() -> None:
    request = _clustered()
    shield = parse_shield({"near_duplicates": {"max_cosine": 0.95}, "pinned": {"item-1": 1}}).for_request(request)
    draw = sample_slate(np.array([6.0, 5, 4, 3, 2, 1, 0]), 3, Greedy(), draw_key=0, feasibility=shield)
    assert draw.indices == [0, 3, 5]  # item-1 is a near-duplicate of item-0: infeasible at its slot, not drawn
    assert slate_propensities(np.zeros(7), [0, 1, 3], Greedy(), feasibility=shield).tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("value,message", [
    (0, "must be in \\(0, 1\\], got 0"), (-0.5, "must be in"), (1.01, "must be in"), (float("nan"), "must be in \\(0, 1\\], got nan"),
    ("0.9", "must be a number"), (True, "must be a number"),
])
def test_bad_max_cosine_names_the_key(tmp_path: Path, value: object, message: str) -> None:
    config = {"surfaces": {"s": {"shield": {"near_duplicates": {"max_cosine": value}}}}}
    with pytest.raises(ConfigError, match=rf"^surfaces\.s\.shield\.near_duplicates\.max_cosine: {message}"):
        parse_config(config, base_dir=tmp_path)


def test_table_errors_name_the_key(tmp_path: Path) -> None:
    for table, key in [({"near_duplicates": 0.9}, "near_duplicates: must be a table"),
                       ({"near_duplicates": {}}, "near_duplicates.max_cosine: required"),
                       ({"near_duplicates": {"max_cosin": 0.9}}, "near_duplicates.max_cosin: unknown key")]:
        with pytest.raises(ConfigError, match=rf"^surfaces\.s\.shield\.{key}"):
            parse_config({"surfaces": {"s": {"shield": table}}}, base_dir=tmp_path)


def test_version_covers_theta_and_leaves_other_rule_sets_alone() -> None:
    plain = parse_shield({"max_per_value": {"creator": 2}})
    a = parse_shield({"max_per_value": {"creator": 2}, "near_duplicates": {"max_cosine": 0.9}})
    b = parse_shield({"max_per_value": {"creator": 2}, "near_duplicates": {"max_cosine": 0.95}})
    assert len({plain.version, a.version, b.version}) == 3
    assert parse_shield({}).version == "shield-b1e3a844342c5c92"  # the same version as before the rule existed
