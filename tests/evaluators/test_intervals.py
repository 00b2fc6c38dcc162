"""Intervals: hand-computed normal/delta-method widths; the bootstrap's generator, determinism and mergeability."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from scipy.stats import poisson

from evaluators import estimate, intervals
from evaluators.intervals import (
    Moments,
    bernstein_interval,
    event_keys,
    poisson_bootstrap,
    poisson_weights,
    resample_streams,
)

Z975 = 1.959963984540054


def test_normal_ips_by_hand(small_table: pl.DataFrame) -> None:
    out = estimate(small_table, "ips", ci="normal").row(0, named=True)
    terms = np.array([2.0, 0.0, 1.0, 0.0])
    se = math.sqrt(((terms - 0.75) ** 2).sum() / 3) / 2
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.75 - Z975 * se, 0.75 + Z975 * se), rel=1e-12)
    assert out["ci_method"] == "normal"


def test_normal_snips_delta_method_by_hand(small_table: pl.DataFrame) -> None:
    w, r = np.array([2.0, 0.5, 1.0, 0.0]), np.array([1.0, 0.0, 1.0, 1.0])
    v = (w * r).sum() / w.sum()
    influence = (w * r - v * w) / w.mean()           # linearisation of Σwr/Σw around the means
    se = math.sqrt(influence.var(ddof=1) / 4)
    out = estimate(small_table, "snips", ci="normal").row(0, named=True)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((v - Z975 * se, v + Z975 * se), rel=1e-9)


def test_bernstein_by_hand() -> None:
    x = np.array([0.0, 1.0, 2.0, 1.0, 0.0, 3.0, 1.0, 0.0])
    n, alpha = x.size, 0.1
    log_term = math.log(2 / (alpha / 2))             # one random column, two sides
    width = math.sqrt(2 * x.var(ddof=1) * log_term / n) + 7 * 3.0 * log_term / (3 * (n - 1))
    m = Moments.from_columns({"x": x, "one": np.ones(n)})
    got = bernstein_interval((("x", "one"),), m, alpha)
    assert got.low == pytest.approx(max(x.mean() - width, 0.0))
    assert got.high == pytest.approx(min(x.mean() + width, 3.0))
    assert got.method == "bernstein" and "x in [0, 3]" in got.note


def _columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.exponential(size=n)
    return {"w*r": w * (rng.random(n) < 0.3), "w": w, "one": np.ones(n)}


def _keys(n: int) -> np.ndarray:
    return event_keys(pl.Series([f"event-{i}" for i in range(n)]))


MASK = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_weights_follow_the_documented_generator() -> None:
    # The formula of the module docstring in plain Python integers, for a few units, resamples and seeds.
    table = poisson.ppf((np.arange(65536) + 0.5) / 65536, 1.0)
    keys = _keys(5)
    assert np.array_equal(resample_streams(np.int64(7), 10), resample_streams(7, 10))  # no int64 overflow
    for seed in (0, 7, -3):
        weights = poisson_weights(keys, resample_streams(seed, 10), 10)
        for j in range(5):
            for b in range(10):
                stream = _mix64((seed * GAMMA + b // 4 + GAMMA) & MASK)
                u = _mix64(((int(keys[j]) ^ stream) + GAMMA) & MASK)
                assert weights[j, b] == table[(u >> (16 * (b % 4))) & 0xFFFF]


def test_weights_are_poisson_one() -> None:
    # 200,000 units x 64 resamples, seed 0: mean and variance 1 within 0.005 (s.e. ~4e-4 and ~6e-4),
    # P(W = 0) = 1/e within 0.002, and neighbouring resamples (lanes of one draw, or next draw) uncorrelated.
    w = poisson_weights(_keys(200_000), resample_streams(0, 64), 64)
    assert abs(w.mean() - 1) < 0.005 and abs(w.var() - 1) < 0.005
    assert abs((w == 0).mean() - math.exp(-1)) < 0.002
    for b in (0, 3, 4, 17):
        assert abs(np.corrcoef(w[:, b], w[:, b + 1])[0, 1]) < 0.01


def test_bootstrap_is_deterministic_and_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intervals, "TASK_UNITS", 4096)      # several thread tasks on 20,000 units
    cols, keys = _columns(20_000, 1), _keys(20_000)
    a = poisson_bootstrap(cols, keys=keys, n_resamples=300, seed=7, workers=2).sums
    b = poisson_bootstrap(cols, keys=keys, n_resamples=300, seed=7, workers=1).sums
    c = poisson_bootstrap(cols, keys=keys, n_resamples=300, seed=8, workers=2).sums
    assert np.array_equal(a, b)                     # independent of threading
    assert not np.allclose(a, c)
    # Poisson(1) weights: each resample's count sum ≈ n ± √n.
    assert abs(a[:, 2].mean() - 20_000) < 4 * math.sqrt(20_000 / 300)
    assert a[:, 2].std() == pytest.approx(math.sqrt(20_000), rel=0.15)


@pytest.mark.parametrize("n_parts", [3, 7])
def test_bootstrap_of_shuffled_parts_merges_to_whole(n_parts: int) -> None:
    n = 20_000
    cols, keys = _columns(n, 2), _keys(n)
    whole = poisson_bootstrap(cols, keys=keys, n_resamples=203, seed=3)   # 203: a partial group of 4
    rng = np.random.default_rng(n_parts)
    order = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), n_parts - 1, replace=False))
    parts = [poisson_bootstrap({k: v[idx] for k, v in cols.items()}, keys=keys[idx], n_resamples=203, seed=3)
             for idx in np.split(order, cuts)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
    np.testing.assert_allclose(merged.values((("w*r", "w"),)), whole.values((("w*r", "w"),)), rtol=1e-12)


def test_rows_of_one_event_share_its_weights() -> None:
    # Three rows per event passed unsummed (same key thrice) give the sums of the summed events: a Spark
    # partitioning that splits an event's rows still reproduces the whole.
    rows, event_ids = _columns(3_000, 5), _keys(1_000)
    summed = {k: v.reshape(1_000, 3).sum(axis=1) for k, v in rows.items()}
    a = poisson_bootstrap(rows, keys=np.repeat(event_ids, 3), n_resamples=100, seed=2).sums
    b = poisson_bootstrap(summed, keys=event_ids, n_resamples=100, seed=2).sums
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_bootstrap_rejects_keys_of_another_length() -> None:
    with pytest.raises(ValueError, match="keys"):
        poisson_bootstrap(_columns(10, 0), keys=_keys(9), n_resamples=10, seed=0)


def _slates(n_events: int, seed: int) -> pl.DataFrame:
    """Three positions per event, uniform logging over 5 actions, a target favouring action 0."""
    rng = np.random.default_rng(seed)
    n = 3 * n_events
    action = rng.integers(0, 5, n)
    return pl.DataFrame({
        "event_id": [f"ev{i // 3}" for i in range(n)],
        "position": np.tile([0, 1, 2], n_events),
        "action": action,
        "reward": (rng.random(n) < 0.2 + 0.1 * (action == 0)).astype(np.float64),
        "pscore": np.full(n, 0.2),
        "target_pscore": np.where(action == 0, 0.6, 0.1),
    })


def test_bootstrap_interval_ignores_row_and_event_order() -> None:
    table = _slates(3_000, 4)
    shuffled = table.sample(fraction=1.0, shuffle=True, seed=11)
    a = estimate(table, "ips,snips", ci="bootstrap", n_bootstrap=400, seed=5)
    b = estimate(shuffled, "ips,snips", ci="bootstrap", n_bootstrap=400, seed=5)
    c = estimate(table, "ips,snips", ci="bootstrap", n_bootstrap=400, seed=6)
    for col in ("value", "ci_low", "ci_high"):
        np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy(), rtol=1e-12)
    assert not np.allclose(c["ci_low"].to_numpy(), a["ci_low"].to_numpy(), rtol=1e-9)
    assert "3000 events" in a.row(0, named=True)["ci_note"]


def test_moments_merge_to_whole() -> None:
    cols = _columns(5_000, 3)
    whole = Moments.from_columns(cols)
    merged = Moments.from_columns({k: v[:1234] for k, v in cols.items()}).merge(
        Moments.from_columns({k: v[1234:] for k, v in cols.items()}))
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-9)
    assert merged.n == whole.n and np.array_equal(merged.high, whole.high)


def test_estimate_bootstrap_reproducible(small_table: pl.DataFrame) -> None:
    big = pl.concat([small_table.with_columns(pl.col("event_id") + f"-{i}") for i in range(50)])
    a = estimate(big, "ips,snips", ci="bootstrap", n_bootstrap=200, seed=5)
    b = estimate(big, "ips,snips", ci="bootstrap", n_bootstrap=200, seed=5)
    assert a.equals(b)
    row = a.row(0, named=True)
    assert row["ci_low"] < row["value"] < row["ci_high"] and "200 resamples, seed 5" in row["ci_note"]
