"""Statistical check: intervals cover the true value of a known target policy at about the nominal rate.

Logging: uniform over K = 4 actions (pscore 0.25). Target: π = (0.55, 0.25, 0.15, 0.05). Rewards:
Bernoulli with means μ = (0.7, 0.4, 0.3, 0.1), so V(π) = Σ π μ = 0.385 + 0.1 + 0.045 + 0.005 = 0.535.
The reward model for DR is deliberately wrong (μ + 0.15) to show DR stays unbiased.
With R replications the coverage estimate has sd sqrt(0.95·0.05/R); tolerances are about 3 sd.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from evaluators import estimate

PI = np.array([0.55, 0.25, 0.15, 0.05])
MU = np.array([0.7, 0.4, 0.3, 0.1])
TRUE_VALUE = float(PI @ MU)


def _logs(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    action = rng.integers(0, 4, n)
    reward = (rng.random(n) < MU[action]).astype(float)
    q = MU + 0.15
    return pl.DataFrame({
        "event_id": np.arange(n).astype(str), "position": np.zeros(n, dtype=np.int64), "action": action,
        "reward": reward, "pscore": np.full(n, 0.25), "target_pscore": PI[action],
        "q_hat": q[action], "q_hat_target": np.full(n, float(PI @ q)),
    })


def _coverage(ci: str, reps: int, n: int, **kwargs: int) -> dict[str, float]:
    hits = {"ips": 0, "dr": 0, "snips": 0}
    estimates = {k: [] for k in hits}
    for seed in range(reps):
        out = estimate(_logs(n, seed), "ips,dr,snips", ci=ci, **kwargs)
        for row in out.iter_rows(named=True):
            hits[row["estimator"]] += row["ci_low"] <= TRUE_VALUE <= row["ci_high"]
            estimates[row["estimator"]].append(row["value"])
    # Unbiasedness: the mean over replications is within 4 standard errors of the truth.
    for name in ("ips", "dr"):
        values = np.array(estimates[name])
        assert abs(values.mean() - TRUE_VALUE) < 4 * values.std(ddof=1) / np.sqrt(reps), name
    return {k: v / reps for k, v in hits.items()}


def test_normal_coverage() -> None:
    coverage = _coverage("normal", reps=300, n=1000)          # sd of coverage ≈ 0.0126
    for name, rate in coverage.items():
        assert 0.91 <= rate <= 0.99, (name, rate)


def test_bootstrap_coverage() -> None:
    coverage = _coverage("bootstrap", reps=100, n=1000, n_bootstrap=300)   # sd ≈ 0.022
    for name, rate in coverage.items():
        assert 0.88 <= rate <= 1.0, (name, rate)


def test_bernstein_is_conservative() -> None:
    coverage = _coverage("bernstein", reps=100, n=1000)
    for name, rate in coverage.items():
        assert rate >= 0.95, (name, rate)
