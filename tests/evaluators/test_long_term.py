"""Long-term (per-session) off-policy estimators: closed forms, known-value sessions, bad input, and agreement
with the simulator's on-policy value of a target policy."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from evaluators.long_term import estimate_long_term, session_terms
from evaluators.table import TableError
from recsys_rl.sim import SimConfig, World

# --------------------------------------------------------------------------------------- closed forms
TWO_SESSIONS = pl.DataFrame({
    "session_id": ["b", "a", "a", "b", "a"],  # unordered on purpose
    "step": [1, 0, 2, 0, 1],
    "reward": [3.0, 1.0, 1.0, 0.0, 2.0],
    "pscore": [0.5, 0.5, 0.5, 0.25, 0.5],
    "target_pscore": [0.25, 1.0, 0.5, 0.5, 0.25],
    "q_hat": [1.0, 0.5, 0.0, 0.5, 1.0],
    "v_hat": [2.0, 1.0, 0.5, 1.0, 0.0],
})


def test_pdis_and_sdr_match_hand_computation() -> None:
    g = 0.5
    # session a: w = 2, 0.5, 1 -> rho = 2, 1, 1; session b: w = 2, 0.5 -> rho = 2, 1
    pdis, rho = session_terms(TWO_SESSIONS, estimator="pdis", gamma=g)
    assert pdis.tolist() == pytest.approx([2 * 1 + g * 1 * 2 + g**2 * 1 * 1, 2 * 0 + g * 1 * 3])
    assert rho.tolist() == [1.0, 1.0]
    sdr, _ = session_terms(TWO_SESSIONS, estimator="sdr", gamma=g)
    a = (2 * (1 - 0.5) + 1 * 1.0) + g * (1 * (2 - 1.0) + 2 * 0.0) + g**2 * (1 * (1 - 0.0) + 1 * 0.5)
    b = (2 * (0 - 0.5) + 1 * 1.0) + g * (1 * (3 - 1.0) + 2 * 2.0)
    assert sdr.tolist() == pytest.approx([a, b])
    estimate = estimate_long_term(TWO_SESSIONS, estimator="sdr", gamma=g)
    assert estimate.value == pytest.approx((a + b) / 2)
    assert estimate.n_sessions == 2 and estimate.n_decisions == 5
    assert estimate.interval.method == "normal" and estimate.interval.low < estimate.value < estimate.interval.high


def test_clipping_bounds_each_cumulative_ratio() -> None:
    clipped, rho = session_terms(TWO_SESSIONS, estimator="pdis", gamma=1.0, max_weight=1.5)
    assert rho.max() <= 1.5
    assert clipped.tolist() == pytest.approx([1.5 * 1 + 1 * 2 + 1 * 1, 1.5 * 0 + 1 * 3])


# ---------------------------------------------------------------------------------- known-value MDP
def _bandit_sessions(n: int, horizon: int, p_log: float, seed: int) -> pl.DataFrame:
    """Sessions of ``horizon`` steps, two actions; reward = action + noise. Target plays 1 w.p. 0.8."""
    rng = np.random.default_rng(seed)
    a = (rng.random((n, horizon)) < p_log).astype(float)
    reward = a + 0.1 * rng.standard_normal((n, horizon))
    pscore = np.where(a == 1, p_log, 1 - p_log)
    target = np.where(a == 1, 0.8, 0.2)
    gamma = 0.9
    tail = np.array([sum(gamma**k * 0.8 for k in range(1, horizon - t)) for t in range(horizon)])
    q_hat = a + tail  # exact Q^π(s_t, a_t): the action's reward, then π's expected discounted rewards
    v_hat = 0.8 + tail
    return pl.DataFrame({
        "session_id": np.repeat(np.arange(n), horizon), "step": np.tile(np.arange(horizon), n),
        "reward": reward.ravel(), "pscore": pscore.ravel(), "target_pscore": target.ravel(),
        "q_hat": q_hat.ravel(), "v_hat": np.tile(v_hat, n),
    })


@pytest.mark.parametrize("estimator", ["pdis", "sdr"])
@pytest.mark.parametrize("ci", ["normal", "bootstrap"])
def test_known_value_is_recovered_within_its_interval(estimator: str, ci: str) -> None:
    horizon, gamma = 4, 0.9
    truth = sum(gamma**t * 0.8 for t in range(horizon))
    estimate = estimate_long_term(_bandit_sessions(4000, horizon, 0.5, seed=1), estimator=estimator, gamma=gamma,
                                  ci=ci, n_bootstrap=500, seed=2)
    # Fixed seed; the 95% interval must cover the truth and be narrower than 10% of it.
    assert estimate.interval.low <= truth <= estimate.interval.high, estimate
    assert estimate.interval.high - estimate.interval.low < 0.1 * truth


def test_sdr_with_exact_q_has_only_the_reward_noise_left() -> None:
    table = _bandit_sessions(4000, 4, 0.5, seed=3)
    pdis, _ = session_terms(table, estimator="pdis", gamma=0.9)
    sdr, _ = session_terms(table, estimator="sdr", gamma=0.9)
    # With exact Q the importance weights only multiply the reward noise (sd 0.1): far below PDIS's spread.
    assert sdr.std() < 0.25 * pdis.std()


def test_bernstein_interval_is_wider_than_normal() -> None:
    table = _bandit_sessions(2000, 3, 0.5, seed=4)
    normal = estimate_long_term(table, ci="normal", gamma=0.9).interval
    bernstein = estimate_long_term(table, ci="bernstein", gamma=0.9).interval
    assert bernstein.low < normal.low and bernstein.high > normal.high


@pytest.mark.parametrize(("change", "message"), [
    (lambda df: df.drop("pscore"), "column 'pscore': required"),
    (lambda df: df.drop("v_hat"), "column 'v_hat': required by sdr"),
    (lambda df: df.with_columns(pscore=pl.lit(0.0)), "column 'pscore': logging probabilities"),
    (lambda df: df.with_columns(target_pscore=pl.lit(1.5)), "column 'target_pscore'"),
    (lambda df: df.with_columns(reward=pl.lit(math.nan)), "column 'reward': must be finite"),
    (lambda df: df.with_columns(step=pl.col("step") + 1), "column 'step': session"),
    (lambda df: df.with_columns(reward=pl.lit("x")), "column 'reward': must be numeric"),
    (lambda df: df.clear(), "table: no rows"),
])
def test_bad_tables_name_the_column(change, message: str) -> None:  # noqa: ANN001
    with pytest.raises(TableError, match=message):
        estimate_long_term(change(TWO_SESSIONS), estimator="sdr")


def test_bad_parameters_name_the_parameter() -> None:
    for kwargs, name in [({"estimator": "ips"}, "estimator"), ({"gamma": 1.5}, "gamma"), ({"ci": "t"}, "ci"),
                         ({"alpha": 0.0}, "alpha"), ({"max_weight": 0.0}, "max_weight")]:
        with pytest.raises(ValueError, match=f"parameter '{name}'"):
            estimate_long_term(TWO_SESSIONS, **kwargs)


# -------------------------------------------------------------------------------- the simulator check
SIM = SimConfig(n_users=3000, n_items=60, n_candidates=10, slate_size=3, max_steps_per_session=4)
BETA = 1.0  # target: top slot ∝ exp(BETA · appeal_signal), lower slots uniform among the rest
GAMMA = 0.9


def _top_probs(page_view) -> np.ndarray:  # noqa: ANN001 - PageView
    signal = np.array([c.features.numeric["appeal_signal"] for c in page_view.candidates])
    weights = np.exp(BETA * (signal - signal.max()))
    return weights / weights.sum()


def _day_zero(seed: int, *, target: bool) -> tuple[pl.DataFrame, np.ndarray]:
    """Day 0 of a world (one session per visitor): the logged table under the uniform-random slate policy
    (or the target's sessions when ``target``), and each session's discounted click return."""
    world = World(SIM, seed=seed)
    rng = np.random.default_rng(seed + 100)
    rows: list[tuple[str, int, float, float, float]] = []
    returns: dict[str, float] = {}
    while (page_view := world.next_page_view()) is not None:
        n, k = len(page_view.candidates), page_view.slate_size
        top = _top_probs(page_view)
        if target:
            first = int(rng.choice(n, p=top))
            rest = rng.permutation([j for j in range(n) if j != first])[: k - 1]
            picks = [first, *rest.tolist()]
        else:
            picks = rng.choice(n, size=k, replace=False).tolist()
        response = world.respond(page_view, [page_view.candidates[j].item_id for j in picks])
        reward = float(response.clicked_item_id is not None)
        # Both policies fill slots 2..k uniformly among the items left, so the slate ratio is the top slot's.
        pscore = math.prod(1.0 / (n - s) for s in range(k))
        target_pscore = top[picks[0]] * math.prod(1.0 / (n - s) for s in range(1, k))
        rows.append((page_view.user_id, page_view.session_step, reward, pscore, target_pscore))
        returns[page_view.user_id] = returns.get(page_view.user_id, 0.0) + GAMMA**page_view.session_step * reward
    table = pl.DataFrame(rows, schema=["session_id", "step", "reward", "pscore", "target_pscore"], orient="row")
    return table, np.array(list(returns.values()))


def test_estimates_from_uniform_logs_agree_with_the_simulators_on_policy_value() -> None:
    logged, logged_returns = _day_zero(11, target=False)
    on_policy = np.concatenate([_day_zero(seed, target=True)[1] for seed in (21, 22, 23)])
    truth, truth_se = on_policy.mean(), on_policy.std(ddof=1) / math.sqrt(on_policy.size)
    # q̂ = v̂ = mean step reward of the logs: crude, but sdr is unbiased for any q̂ with v̂ = E_π q̂.
    mean_reward = float(logged["reward"].mean())
    for estimator in ("pdis", "sdr"):
        table = logged.with_columns(q_hat=pl.lit(mean_reward), v_hat=pl.lit(mean_reward))
        estimate = estimate_long_term(table, estimator=estimator, gamma=GAMMA)
        se = (estimate.interval.high - estimate.interval.low) / (2 * 1.959964)
        # Tolerance: 3 standard errors of the difference (estimate vs Monte-Carlo truth, independent worlds).
        assert abs(estimate.value - truth) <= 3 * math.hypot(se, truth_se), (estimator, estimate.value, truth)
    # The check has power: the target's value differs from the logging policy's by far more than that.
    logged_se = logged_returns.std(ddof=1) / math.sqrt(logged_returns.size)
    assert truth - logged_returns.mean() > 4 * math.hypot(truth_se, logged_se)


def test_bootstrap_is_keyed_by_session_id() -> None:
    # Integer session ids hash as their decimal strings, so the same sessions give the same interval either way;
    # relabelled sessions draw other weights.
    table = _bandit_sessions(500, 3, 0.5, seed=5)
    as_int = estimate_long_term(table, ci="bootstrap", n_bootstrap=300, seed=1).interval
    as_str = estimate_long_term(table.with_columns(pl.col("session_id").cast(pl.String)), ci="bootstrap",
                                n_bootstrap=300, seed=1).interval
    relabelled = estimate_long_term(table.with_columns(pl.col("session_id") + 10_000), ci="bootstrap",
                                    n_bootstrap=300, seed=1).interval
    assert (as_str.low, as_str.high) == pytest.approx((as_int.low, as_int.high), rel=1e-12)
    assert (relabelled.low, relabelled.high) != pytest.approx((as_int.low, as_int.high), rel=1e-9)
