"""The cross-fitted reward model learns a simple reward and never scores a row with a model that saw it."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from evaluators.reward_model import DEFAULT_PARAMS, fit_reward_model


def _synthetic(n: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """P(click) = 0.1 + 0.5·1{device = ios}·x + 0.3·1{action = 2}, x ~ U(0, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    device = rng.choice(["ios", "android", "web"], n)
    action = rng.integers(0, 3, n)
    p = 0.1 + 0.5 * (device == "ios") * x + 0.3 * (action == 2)
    rows = pl.DataFrame({
        "event_id": [f"e{i}" for i in range(n)], "position": np.zeros(n, dtype=np.int64), "action": action,
        "x": x, "device": pl.Series(device).cast(pl.Categorical), "item": action.astype(str),
        "reward": (rng.random(n) < p).astype(float),
    })
    return rows, p


def test_learns_better_than_the_mean() -> None:
    rows, p = _synthetic(6000, 0)
    model = fit_reward_model(rows, ["x", "device", "item"], k=3, seed=1, params={"num_threads": 1})
    q = model.q_hat["q_hat"].to_numpy()
    mse_model = np.mean((q - p) ** 2)
    mse_mean = np.mean((rows["reward"].mean() - p) ** 2)
    assert model.objective == "binary"
    assert mse_model < 0.25 * mse_mean, (mse_model, mse_mean)


def test_q_hat_target_is_the_policy_average() -> None:
    rows, _ = _synthetic(3000, 1)
    model = fit_reward_model(rows, ["x", "device", "item"], k=3, seed=1, num_boost_round=30)
    # Every logged event gets all three candidate actions; the target policy plays action 2 w.p. 0.5.
    candidates = (
        rows.select("event_id", "position", "x", "device")
        .join(pl.DataFrame({"action": [0, 1, 2], "target_prob": [0.25, 0.25, 0.5]}), how="cross")
        .with_columns(pl.col("action").cast(pl.String).alias("item"))
    )
    out = model.q_hat_target(candidates)
    assert out.height == rows.height
    per_candidate = model.predict(candidates)
    expected = (candidates["target_prob"].to_numpy() * per_candidate).reshape(-1, 3).sum(axis=1)
    np.testing.assert_allclose(out["q_hat_target"].to_numpy(), expected, rtol=1e-12)
    # The logged rows are predicted by the same out-of-fold boosters as the candidate rows.
    np.testing.assert_allclose(model.predict(rows), model.q_hat["q_hat"].to_numpy(), rtol=1e-12)


def test_cross_fitting_cannot_memorise_events() -> None:
    """Event-level noise rewards with an event-id feature: in-sample fits memorise, out-of-fold cannot."""
    rng = np.random.default_rng(2)
    events, per_event = 200, 40
    noise = rng.normal(size=events)
    idx = np.repeat(np.arange(events), per_event)
    rows = pl.DataFrame({
        "event_id": idx.astype(str), "position": np.tile(np.arange(per_event), events), "action": 0,
        "event_feature": idx.astype(float), "reward": noise[idx],
    })
    model = fit_reward_model(rows, ["event_feature"], k=5, seed=0, num_boost_round=100, params={"num_threads": 1})
    oof_corr = np.corrcoef(model.q_hat["q_hat"].to_numpy(), noise[idx])[0, 1]
    x = rows.select("event_feature").to_numpy()
    in_sample = lgb.train({**DEFAULT_PARAMS, "objective": "regression", "seed": 0, "num_threads": 1},
                          lgb.Dataset(x, label=noise[idx]), num_boost_round=100).predict(x)
    assert np.corrcoef(in_sample, noise[idx])[0, 1] > 0.8       # memorisation is possible in-sample
    assert abs(oof_corr) < 0.3, oof_corr                         # but not across folds


def test_bad_inputs() -> None:
    rows, _ = _synthetic(100, 3)
    with pytest.raises(ValueError, match="missing feature column 'nope'"):
        fit_reward_model(rows, ["nope"], seed=0)
    with pytest.raises(ValueError, match="parameter 'k'"):
        fit_reward_model(rows, ["x"], k=1, seed=0)
    with pytest.raises(ValueError, match="missing column 'reward'"):
        fit_reward_model(rows.drop("reward"), ["x"], seed=0)
