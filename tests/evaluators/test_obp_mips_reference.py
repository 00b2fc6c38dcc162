"""MIPS and SNMIPS match Open Bandit Pipeline 0.5.7 on a seeded synthetic table (relative gap ≤ 1e-12).

The reference numbers come from obp 0.5.7 itself (fixtures/obp_mips_reference.py says how they were made; obp is
not installed here). OBP's SelfNormalizedMarginalizedInverseProbabilityWeighting with known ``p_e_a`` multiplies
per-dimension marginals, Π_d p(e_d|x), unlike its non-normalised sibling, which sums over the actions matching the
whole embedding: for a multi-dimensional deterministic embedding its SN number is not the SNMIPS of the joint
embedding. We compute the joint; the last test reproduces OBP's product form to show that is the only difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluators import estimate
from evaluators.embeddings import marginal_propensities
from evaluators.mips_study import EmbeddingProblem
from tests.evaluators.fixtures.obp_mips_reference import DRAW_SEED, PROBLEM

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "obp_mips_reference.json").read_text())
REL_GAP = 1e-12


@pytest.fixture(scope="module")
def drawn() -> tuple[EmbeddingProblem, object, np.ndarray]:
    assert REFERENCE["problem"] == PROBLEM and REFERENCE["draw_seed"] == DRAW_SEED
    problem = EmbeddingProblem(**PROBLEM)
    table, context = problem.draw(DRAW_SEED)
    # The generator must still draw the table OBP saw.
    assert table["reward"].sum() == REFERENCE["reward_sum"] and table["action"].sum() == REFERENCE["action_sum"]
    return problem, table, context


def _gap(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / abs(theirs)


def test_mips_matches_obp_for_both_encodings(drawn: tuple) -> None:
    _, table, _ = drawn
    ours = estimate(table, "mips")["value"][0]
    for encoding in ("one_dimension", "two_dimensions"):
        assert _gap(ours, REFERENCE["values"][encoding]["mips"]) <= REL_GAP


def test_snmips_matches_obp_for_a_single_categorical_embedding(drawn: tuple) -> None:
    _, table, _ = drawn
    ours = estimate(table, "snmips")["value"][0]
    assert _gap(ours, REFERENCE["values"]["one_dimension"]["snmips"]) <= REL_GAP
    assert _gap(ours, REFERENCE["values"]["two_dimensions"]["snmips"]) > 1e-4   # see the module docstring


def test_obp_two_dimension_snmips_is_the_product_of_per_dimension_marginals(drawn: tuple) -> None:
    """A transcription of OBP 0.5.7's SN branch (estimators_embed.py, known p_e_a), labelled as such."""
    problem, table, context = drawn
    e = table["action_embedding"].to_numpy()
    weight = np.ones(table.height)
    for of_action, of_row in ((problem.embedding_of_action // 5, e // 5), (problem.embedding_of_action % 5, e % 5)):
        mu_d = marginal_propensities(problem.logging_policy, of_action, 5)[context, of_row]
        pi_d = marginal_propensities(problem.target_policy, of_action, 5)[context, of_row]
        weight *= pi_d / mu_d
    reward = table["reward"].to_numpy()
    obp_form = float(np.sum(weight * reward) / np.sum(weight))
    assert _gap(obp_form, REFERENCE["values"]["two_dimensions"]["snmips"]) <= REL_GAP
