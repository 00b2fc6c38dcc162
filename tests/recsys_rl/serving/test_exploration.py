"""Invariant 1 (propensities are the truth) and invariant 2 (caps hold) for the explorers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from recsys_rl.config import ExplorationConfig
from recsys_rl.serving.exploration import (
    CappedExplorer,
    EpsilonGreedy,
    Greedy,
    Softmax,
    SquareCB,
    _inverse_cdf,
    draw_key,
    greedy_index,
    make_explorer,
    sample_slate,
    slate_propensities,
    uniform,
)

EXPLORERS = {
    "epsilon_greedy": EpsilonGreedy(0.3),
    "softmax": Softmax(0.5),
    "squarecb": SquareCB(10.0),
    "greedy": Greedy(),
}
CHI2_ALPHA = 1e-3  # false-alarm rate of each statistical test with its fixed seed


@pytest.mark.parametrize("name", EXPLORERS)
def test_distribution_is_a_probability_vector(name: str) -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        scores = rng.normal(size=int(rng.integers(1, 40)))
        p = EXPLORERS[name].distribution(scores)
        assert p.dtype == np.float64 and p.shape == scores.shape
        assert (p >= 0).all() and abs(p.sum() - 1.0) < 1e-12
        assert p.argmax() == greedy_index(scores)


def test_greedy_ties_break_by_lowest_index() -> None:
    scores = np.array([0.1, 0.7, 0.7, 0.2])
    assert greedy_index(scores) == 1
    assert Greedy().distribution(scores).tolist() == [0, 1, 0, 0]
    assert EpsilonGreedy(0.4).distribution(scores)[1] == pytest.approx(0.7)


def test_squarecb_formula() -> None:
    scores = np.array([1.0, 0.5, 0.0])
    p = SquareCB(4.0).distribution(scores)
    assert p[1] == pytest.approx(1 / (3 + 4 * 0.5))
    assert p[2] == pytest.approx(1 / (3 + 4 * 1.0))
    assert p[0] == pytest.approx(1 - p[1] - p[2])


@pytest.mark.parametrize("name", EXPLORERS)
def test_caps_hold_for_every_explorer(name: str) -> None:
    rng = np.random.default_rng(2)
    inner = EXPLORERS[name]
    for _ in range(300):
        scores = rng.normal(scale=rng.uniform(0.01, 3), size=int(rng.integers(1, 60)))
        cap = float(rng.choice([0.0, 1.0, rng.uniform()]))
        p_inner = inner.distribution(scores)
        p = CappedExplorer(inner, cap).distribution(scores)
        g = greedy_index(scores)
        mass = 1.0 - p[g]
        assert mass <= cap + 1e-12
        assert (p >= 0).all() and abs(p.sum() - 1.0) < 1e-12
        if 1.0 - p_inner[g] <= cap:
            np.testing.assert_array_equal(p, p_inner)  # under the cap: untouched
        else:
            assert mass == pytest.approx(cap, abs=1e-12)  # over it: exactly the cap
            others = np.arange(scores.size) != g
            np.testing.assert_allclose(p[others], p_inner[others] * cap / (1 - p_inner[g]), rtol=1e-12)


def test_cap_zero_is_greedy_and_slates_never_explore() -> None:
    scores = np.random.default_rng(3).normal(size=20)
    explorer = make_explorer(ExplorationConfig(algorithm="softmax", temperature=10.0), 0.0)
    for key in range(200):
        slate = sample_slate(scores, 5, explorer, draw_key=key)
        assert not any(s.explored for s in slate.slots)
        assert slate.slate_propensity == 1.0
        assert [s.index for s in slate.slots] == list(np.argsort(-scores, kind="stable")[:5])


@pytest.mark.parametrize("algorithm", ["epsilon_greedy", "softmax", "squarecb"])
def test_slot0_frequencies_match_logged_propensities(algorithm: str) -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.5, -0.3, 0.0])
    cfg = ExplorationConfig(algorithm=algorithm, epsilon=0.5, temperature=1.0, gamma=5.0)
    explorer = make_explorer(cfg, 0.4)
    n_draws = 20_000
    counts = np.zeros(scores.size)
    logged = np.zeros(scores.size)
    for key in range(n_draws):
        first = sample_slate(scores, 3, explorer, draw_key=draw_key(7, "s", f"req-{key}")).slots[0]
        counts[first.index] += 1
        logged[first.index] = first.propensity
    expected = explorer.distribution(scores)
    np.testing.assert_array_equal(logged[counts > 0], expected[counts > 0])
    assert 1.0 - expected[0] == pytest.approx(0.4)  # the cap binds in all three configurations
    assert stats.chisquare(counts, expected * n_draws).pvalue > CHI2_ALPHA


@pytest.mark.parametrize("algorithm", ["epsilon_greedy", "softmax", "squarecb"])
def test_mean_inverse_propensity_is_number_of_candidates_left(algorithm: str) -> None:
    """E[1/p_k(a_k)] = Σ_a p_k(a)/p_k(a) = n − k when every remaining item has positive probability."""
    scores = np.random.default_rng(4).normal(size=12)
    explorer = make_explorer(ExplorationConfig(algorithm=algorithm, epsilon=0.5, temperature=2.0, gamma=5.0), 0.5)
    n_draws, slate_size = 20_000, 4
    inverse = np.zeros((n_draws, slate_size))
    for key in range(n_draws):
        slate = sample_slate(scores, slate_size, explorer, draw_key=draw_key(11, "s", str(key)))
        inverse[key] = [1.0 / s.propensity for s in slate.slots]
    for k in range(slate_size):
        assert inverse[:, k].mean() == pytest.approx(scores.size - k, rel=0.05)  # tolerance 5%


@pytest.mark.parametrize("name", EXPLORERS)
def test_replay_propensities_agree_exactly_with_sampling(name: str) -> None:
    rng = np.random.default_rng(5)
    explorer = CappedExplorer(EXPLORERS[name], 0.6)
    for key in range(300):
        scores = rng.normal(size=int(rng.integers(1, 30)))
        slate = sample_slate(scores, 6, explorer, draw_key=key)
        assert len(slate.slots) == min(6, scores.size)
        assert len({s.index for s in slate.slots}) == len(slate.slots)
        logged = [s.propensity for s in slate.slots]
        assert slate.slate_propensity == pytest.approx(float(np.prod(logged)), rel=1e-15)
        assert slate_propensities(scores, slate.indices, explorer).tolist() == logged
        assert all(s.explored == (s.index != s.greedy_index) for s in slate.slots)
        assert all(0 <= s.exploration_mass <= 0.6 + 1e-12 for s in slate.slots)


def test_same_key_same_slate_and_keys_depend_on_every_part() -> None:
    scores = np.random.default_rng(6).normal(size=30)
    explorer = CappedExplorer(Softmax(1.0), 1.0)
    key = draw_key(1, "home", "r-1")
    assert sample_slate(scores, 10, explorer, draw_key=key) == sample_slate(scores, 10, explorer, draw_key=key)
    keys = {draw_key(1, "home", "r-1"), draw_key(2, "home", "r-1"), draw_key(1, "homer", "-1"), draw_key(1, "home", "r-2")}
    assert len(keys) == 4 and all(0 <= k < 2**64 for k in keys)
    draws = [uniform(key, k) for k in range(10_000)]
    assert 0.0 <= min(draws) and max(draws) < 1.0
    assert stats.kstest(draws, "uniform").pvalue > CHI2_ALPHA


def test_inverse_cdf_never_draws_zero_probability_items() -> None:
    p = np.array([0.0, 0.5, 0.0, 0.5, 0.0, 0.0])
    top = 1.0 - 2.0**-53
    assert _inverse_cdf(p, 0.0) == 1
    assert _inverse_cdf(p, top) == 3
    # A distribution whose cdf falls short of 1 by rounding still maps u -> 1 to a positive item.
    q = np.array([0.1] * 10 + [0.0])
    assert q[_inverse_cdf(q, top)] > 0


def test_bad_inputs_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(1.5)
    with pytest.raises(ValueError, match="cap"):
        CappedExplorer(Greedy(), -0.1)
    with pytest.raises(ValueError, match="slate_size"):
        sample_slate(np.zeros(3), 0, Greedy(), draw_key=1)
    with pytest.raises(ValueError, match="scores"):
        sample_slate(np.array([0.0, np.nan]), 1, Greedy(), draw_key=1)
    with pytest.raises(ValueError, match=r"slate_indices\[1\]"):
        slate_propensities(np.zeros(3), [0, 0], Greedy())
