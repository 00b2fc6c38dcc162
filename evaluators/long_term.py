"""Off-policy estimates of the long-term (discounted per-session) value of a target policy, from logged sessions.

Input: a polars table with one row per logged decision (page view), not per slate position:

| column | meaning |
|---|---|
| ``session_id`` | the episode (e.g. ``logging_schema.retention``'s ``"<user>#<k>"``) |
| ``step`` | 0-based index of the decision inside its session; every session has steps 0..T−1 |
| ``reward`` | r_t, the decision's immediate reward (clicks, dwell, return credit on the last step, ...) |
| ``pscore`` | μ(A_t | s_t): the logging policy's probability of the logged action |
| ``target_pscore`` | π(A_t | s_t): the target policy's probability of the same action |
| ``q_hat`` | (sdr only) Q̂(s_t, A_t): model estimate of the return from t on, taking A_t then following π |
| ``v_hat`` | (sdr only) V̂(s_t) = E_{a∼π} Q̂(s_t, a) |

The action A_t is the whole ordered slate, so ``pscore`` should be the logged ``slate_propensity`` (the product
of the exact per-slot propensities) and ``target_pscore`` the target's probability of that same slate. A
top-slot ratio is only right when the target differs from the logging policy in the top slot alone (the other
slots' conditional probabilities cancel); otherwise it is biased.

With w_t = target_pscore / pscore and the cumulative ratio ρ_{0:t} = Π_{k≤t} w_k (ρ_{0:−1} = 1), each session
contributes one term (Precup et al. 2000; Jiang & Li 2016; Thomas & Brunskill 2016):

    pdis (per-decision importance sampling)   G = Σ_t γ^t ρ_{0:t} r_t
    sdr  (sequential doubly robust)           G = Σ_t γ^t [ρ_{0:t} (r_t − q̂_t) + ρ_{0:t−1} v̂_t]
                                              (= the recursion V_t = v̂_t + w_t (r_t + γ V_{t+1} − q̂_t), V_T = 0)

and the estimate is the mean of G over sessions: an unbiased estimate of E_π[Σ_t γ^t r_t] per session when the
logging propensities are exact and positive wherever π is (sdr: for any q̂, v̂ with v̂ = E_π q̂). Sessions are
the i.i.d. units, so the intervals come from ``evaluators.intervals`` on the per-session terms: ``normal`` (CLT),
``bootstrap`` (Poisson bootstrap, percentile; rows here have no event id, so each session's weights are keyed by
its ``session_id``) or ``bernstein`` (empirical Bernstein on the observed range).
``max_weight`` clips each cumulative ratio ρ_{0:t} at M (biased, lower variance); diagnostics report the
effective number of sessions (Σρ)²/Σρ² of the final cumulative ratios and the largest one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from evaluators.intervals import (
    CI_METHODS,
    Interval,
    Moments,
    bernstein_interval,
    bootstrap_interval,
    event_keys,
    normal_interval,
    poisson_bootstrap,
)
from evaluators.table import TableError

__all__ = ["LONG_TERM_ESTIMATORS", "LongTermEstimate", "estimate_long_term", "session_terms"]

LONG_TERM_ESTIMATORS = ("pdis", "sdr")
_PARTS = (("term", "one"),)  # V = Σ term / Σ 1 over sessions


@dataclass(frozen=True)
class LongTermEstimate:
    """The estimate, its interval (which names its method) and weight diagnostics."""

    estimator: str
    value: float
    interval: Interval
    gamma: float
    n_sessions: int
    n_decisions: int
    effective_sessions: float  # (Σ ρ_T)² / Σ ρ_T² over sessions' final cumulative ratios
    max_cumulative_weight: float


def _validated(df: pl.DataFrame, estimator: str) -> pl.DataFrame:
    if not isinstance(df, pl.DataFrame):
        raise TableError(None, f"table: expected a polars DataFrame, got {type(df).__name__}")
    if estimator not in LONG_TERM_ESTIMATORS:
        raise ValueError(f"parameter 'estimator' must be one of {', '.join(LONG_TERM_ESTIMATORS)}, got {estimator!r}")
    needed = ["session_id", "step", "reward", "pscore", "target_pscore"]
    needed += ["q_hat", "v_hat"] if estimator == "sdr" else []
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise TableError(missing[0], f"required by {estimator} but missing")
    if df.height == 0:
        raise TableError(None, "table: no rows")
    for name in needed[1:]:
        column = df.get_column(name)
        if not column.dtype.is_numeric():
            raise TableError(name, f"must be numeric, got {column.dtype}")
        values = column.cast(pl.Float64)
        if values.null_count() or not np.isfinite(values.to_numpy()).all():
            raise TableError(name, "must be finite and non-null")
    if df.get_column("session_id").null_count():
        raise TableError("session_id", "must be non-null")
    pscore = df.get_column("pscore").cast(pl.Float64)
    if (pscore <= 0).any() or (pscore > 1).any():
        raise TableError("pscore", "logging probabilities must be in (0, 1]")
    target = df.get_column("target_pscore").cast(pl.Float64)
    if (target < 0).any() or (target > 1).any():
        raise TableError("target_pscore", "target probabilities must be in [0, 1]")
    ordered = df.sort("session_id", "step")
    # Steps 0..T−1 with no gap or repeat: the cumulative ratio needs every decision of the session.
    bad = ordered.with_columns(expected=pl.int_range(pl.len()).over("session_id")).filter(
        pl.col("step") != pl.col("expected"))
    if bad.height:
        row = bad.row(0, named=True)
        raise TableError("step", f"session {row['session_id']!r} must have steps 0..T-1 once each; "
                         f"found step {row['step']} where {row['expected']} was expected")
    return ordered


def session_terms(df: pl.DataFrame, *, estimator: str = "pdis", gamma: float = 1.0,
                  max_weight: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-session terms G (see the module docstring) and each session's final cumulative ratio ρ_{0:T−1}."""
    per_session = _per_session(df, estimator=estimator, gamma=gamma, max_weight=max_weight)
    return per_session.get_column("term").to_numpy(), per_session.get_column("final_rho").to_numpy()


def _per_session(df: pl.DataFrame, *, estimator: str, gamma: float, max_weight: float | None) -> pl.DataFrame:
    """One row per session (sorted by session_id): session_id, term G and final cumulative ratio."""
    if not (math.isfinite(gamma) and 0.0 <= gamma <= 1.0):
        raise ValueError(f"parameter 'gamma' must be in [0, 1], got {gamma}")
    if max_weight is not None and not max_weight > 0:
        raise ValueError(f"parameter 'max_weight' must be > 0, got {max_weight}")
    ordered = _validated(df, estimator)
    w = (pl.col("target_pscore").cast(pl.Float64) / pl.col("pscore").cast(pl.Float64))
    # Cumulative products as exp(Σ log w) would lose exact zeros; cum_prod keeps them.
    frame = ordered.with_columns(rho=w.cum_prod().over("session_id"),
                                 discount=pl.lit(gamma, pl.Float64).pow(pl.col("step").cast(pl.Float64)))
    if max_weight is not None:
        frame = frame.with_columns(pl.col("rho").clip(upper_bound=max_weight))
    frame = frame.with_columns(rho_before=pl.col("rho").shift(1, fill_value=1.0).over("session_id"))
    r = pl.col("reward").cast(pl.Float64)
    if estimator == "pdis":
        step_term = pl.col("discount") * pl.col("rho") * r
    else:
        step_term = pl.col("discount") * (pl.col("rho") * (r - pl.col("q_hat").cast(pl.Float64))
                                          + pl.col("rho_before") * pl.col("v_hat").cast(pl.Float64))
    return (frame.group_by("session_id", maintain_order=True)
            .agg(term=step_term.sum(), final_rho=pl.col("rho").last()))


def estimate_long_term(df: pl.DataFrame, *, estimator: str = "pdis", gamma: float = 1.0, ci: str = "normal",
                       alpha: float = 0.05, max_weight: float | None = None, n_bootstrap: int = 2000,
                       seed: int = 0) -> LongTermEstimate:
    """Mean discounted session return of the target policy with a (1 − alpha) interval over sessions."""
    if ci not in CI_METHODS:
        raise ValueError(f"parameter 'ci' must be one of {', '.join(CI_METHODS)}, got {ci!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"parameter 'alpha' must be in (0, 1), got {alpha}")
    per_session = _per_session(df, estimator=estimator, gamma=gamma, max_weight=max_weight)
    terms, final_rho = per_session.get_column("term").to_numpy(), per_session.get_column("final_rho").to_numpy()
    columns = {"term": terms, "one": np.ones_like(terms)}
    if ci == "bootstrap":
        # Sessions are the units and these rows have no event id: a session's weights are keyed by its session_id.
        keys = event_keys(per_session.get_column("session_id"))
        sums = poisson_bootstrap(columns, keys=keys, n_resamples=n_bootstrap, seed=seed)
        interval = bootstrap_interval(_PARTS, sums, alpha)
    elif ci == "bernstein":
        interval = bernstein_interval(_PARTS, Moments.from_columns(columns), alpha)
    else:
        interval = normal_interval(_PARTS, Moments.from_columns(columns), alpha)
    square = float(np.sum(final_rho**2))
    return LongTermEstimate(
        estimator=estimator, value=float(terms.mean()), interval=interval, gamma=gamma, n_sessions=terms.size,
        n_decisions=df.height, effective_sessions=float(np.sum(final_rho)) ** 2 / square if square > 0 else 0.0,
        max_cumulative_weight=float(final_rho.max()),
    )  # fmt: skip
