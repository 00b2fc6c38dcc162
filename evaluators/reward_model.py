"""Cross-fitted LightGBM reward model q̂(x, a) for the DM / DR family.

Events are split into K folds by a seeded hash of ``event_id``; the model for fold f is trained on the
other K − 1 folds and scores only fold f's rows, so no row is ever scored by a model that saw it (the
cross-fitting that keeps DR's bias second order). The same hash places a candidate frame's events in
their folds, so q̂π for an event comes from the same out-of-fold model as its logged rows.

Features are columns of the context and the candidate: numeric and boolean columns as floats; string,
categorical and enum columns as LightGBM categorical features (codes learned from the training rows;
unseen values are missing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20, "feature_fraction": 0.9,
    "verbose": -1, "num_threads": 2, "deterministic": True, "force_row_wise": True,
}


@dataclass
class RewardModel:
    """K boosters and the feature encoding; ``q_hat`` holds out-of-fold predictions for the training rows."""

    features: list[str]
    k: int
    seed: int
    objective: str
    categories: dict[str, list[str]]
    boosters: list[lgb.Booster]
    q_hat: pl.DataFrame = field(repr=False)

    def folds(self, frame: pl.DataFrame) -> np.ndarray:
        """Fold of each row of ``frame``, from its ``event_id``."""
        return _folds(frame, self.k, self.seed)

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """q̂ for each row of ``frame``, each scored by the booster that did not train on its event."""
        x = _encode(frame, self.features, self.categories)
        folds = self.folds(frame)
        out = np.empty(frame.height)
        for f, booster in enumerate(self.boosters):
            rows = folds == f
            if rows.any():
                out[rows] = booster.predict(x[rows])
        return out

    def q_hat_target(self, candidates: pl.DataFrame, *, prob_column: str = "target_prob") -> pl.DataFrame:
        """q̂π = Σ_a π(a | x) q̂(x, a) per (event_id, position).

        ``candidates`` is long: one row per (event_id, position, candidate action) with the target policy's
        probability ``prob_column`` and the feature columns (the replay produces it).
        """
        for name in ("event_id", "position", prob_column):
            if name not in candidates.columns:
                raise ValueError(f"candidates: missing column '{name}'")
        scored = candidates.select("event_id", "position", pl.col(prob_column).cast(pl.Float64).alias("p"))
        scored = scored.with_columns(pl.Series("q", self.predict(candidates)))
        return scored.group_by("event_id", "position", maintain_order=True).agg(
            (pl.col("p") * pl.col("q")).sum().alias("q_hat_target")
        )


def _folds(frame: pl.DataFrame, k: int, seed: int) -> np.ndarray:
    if "event_id" not in frame.columns:
        raise ValueError("missing column 'event_id'")
    hashed = frame.select(pl.col("event_id").cast(pl.String).hash(seed=seed) % k).to_series()
    return hashed.to_numpy().astype(np.int64)


def _is_categorical(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Categorical) or isinstance(dtype, (pl.Categorical, pl.Enum))


def _learn_categories(rows: pl.DataFrame, features: list[str]) -> dict[str, list[str]]:
    return {
        name: sorted(rows.get_column(name).cast(pl.String).drop_nulls().unique().to_list())
        for name in features
        if _is_categorical(rows.schema[name])
    }


def _encode(frame: pl.DataFrame, features: list[str], categories: Mapping[str, list[str]]) -> np.ndarray:
    """Float matrix: numeric as is, categorical as codes into ``categories`` (unseen or null → NaN)."""
    exprs = []
    for name in features:
        if name not in frame.columns:
            raise ValueError(f"missing feature column '{name}'")
        dtype = frame.schema[name]
        if name in categories:
            mapping = {value: float(code) for code, value in enumerate(categories[name])}
            exprs.append(pl.col(name).cast(pl.String).replace_strict(mapping, default=None, return_dtype=pl.Float64))
        elif dtype.is_numeric() or dtype == pl.Boolean:
            exprs.append(pl.col(name).cast(pl.Float64))
        else:
            raise ValueError(f"feature column '{name}' has unsupported type {dtype} (numeric, bool or string/categorical)")
    return frame.select(exprs).to_numpy().astype(np.float64, copy=False)


def fit_reward_model(
    rows: pl.DataFrame,
    features: list[str],
    *,
    k: int = 5,
    seed: int,
    reward_column: str = "reward",
    objective: str | None = None,
    num_boost_round: int = 100,
    params: Mapping[str, Any] | None = None,
) -> RewardModel:
    """Fit K boosters on logged ``rows`` (event_id, position, action, reward, features...), cross-fitted.

    ``objective`` defaults to ``binary`` for 0/1 rewards (q̂ is then a probability) and ``regression``
    otherwise. The returned model's ``q_hat`` frame has event_id, position, action and out-of-fold q_hat.
    """
    if k < 2:
        raise ValueError(f"parameter 'k' must be >= 2, got {k}")
    for name in ("event_id", "position", "action", reward_column):
        if name not in rows.columns:
            raise ValueError(f"missing column '{name}'")
    if not features:
        raise ValueError("parameter 'features' is empty")
    for name in features:
        if name not in rows.columns:
            raise ValueError(f"missing feature column '{name}'")
    reward = rows.get_column(reward_column).cast(pl.Float64).to_numpy()
    if not np.isfinite(reward).all():
        raise ValueError(f"column '{reward_column}' has null or non-finite values")
    if objective is None:
        objective = "binary" if np.isin(reward, (0.0, 1.0)).all() else "regression"
    categories = _learn_categories(rows, features)
    x = _encode(rows, features, categories)
    folds = _folds(rows, k, seed)
    categorical = [i for i, name in enumerate(features) if name in categories]
    settings = {**DEFAULT_PARAMS, **(params or {}), "objective": objective, "seed": seed}

    boosters: list[lgb.Booster] = []
    q_hat = np.empty(rows.height)
    for f in range(k):
        held_out = folds == f
        if held_out.all() or not held_out.any():
            raise ValueError(f"parameter 'k' = {k}: fold {f} is empty or holds every event (too few events)")
        train = lgb.Dataset(x[~held_out], label=reward[~held_out], feature_name=list(features),
                            categorical_feature=categorical, free_raw_data=True)
        booster = lgb.train(settings, train, num_boost_round=num_boost_round)
        q_hat[held_out] = booster.predict(x[held_out])
        boosters.append(booster)
    out = rows.select("event_id", "position", "action").with_columns(pl.Series("q_hat", q_hat))
    return RewardModel(list(features), k, seed, objective, categories, boosters, out)
