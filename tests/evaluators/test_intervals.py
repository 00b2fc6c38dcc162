"""Intervals: hand-computed normal/delta-method widths, bootstrap determinism and mergeability."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from evaluators import estimate
from evaluators.intervals import Moments, bernstein_interval, poisson_bootstrap

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


def test_bootstrap_is_deterministic_and_seeded() -> None:
    cols = _columns(20_000, 1)
    a = poisson_bootstrap(cols, n_resamples=300, seed=7, workers=2).sums
    b = poisson_bootstrap(cols, n_resamples=300, seed=7, workers=1).sums
    c = poisson_bootstrap(cols, n_resamples=300, seed=8, workers=2).sums
    assert np.array_equal(a, b)                     # independent of threading
    assert not np.allclose(a, c)
    # Poisson(1) weights: each resample's count sum ≈ n ± √n.
    assert abs(a[:, 2].mean() - 20_000) < 4 * math.sqrt(20_000 / 300)
    assert a[:, 2].std() == pytest.approx(math.sqrt(20_000), rel=0.15)


def test_bootstrap_halves_merge_to_whole() -> None:
    cols = _columns(20_000, 2)
    split = 12_345                                  # not on a block boundary
    whole = poisson_bootstrap(cols, n_resamples=200, seed=3)
    first = poisson_bootstrap({k: v[:split] for k, v in cols.items()}, n_resamples=200, seed=3)
    second = poisson_bootstrap({k: v[split:] for k, v in cols.items()}, n_resamples=200, seed=3, unit_offset=split)
    merged = first.merge(second)
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-5)
    np.testing.assert_allclose(merged.values((("w*r", "w"),)), whole.values((("w*r", "w"),)), rtol=1e-5)


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
