"""``estimate``: many estimators, their intervals and diagnostics on one feedback table, in one pass."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from evaluators.diagnostics import Diagnostics, diagnose
from evaluators.estimators import Estimator, FeedbackData, Statistics, parse_estimators
from evaluators.intervals import (
    CI_METHODS,
    BootstrapSums,
    Interval,
    Moments,
    bernstein_interval,
    betting_interval,
    bootstrap_interval,
    event_keys,
    hard_regime,
    normal_interval,
    poisson_bootstrap,
)
from evaluators.spark import is_spark_dataframe
from evaluators.table import TableError, load_table, validate_table
from evaluators.verdict import DEFAULT_POLICY, VerdictPolicy, verdict

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "estimator": pl.String(), "value": pl.Float64(), "ci_low": pl.Float64(), "ci_high": pl.Float64(),
    "ci_method": pl.String(), "ci_note": pl.String(), "n": pl.Int64(), "ess": pl.Float64(),
    "max_weight": pl.Float64(), "max_weight_share": pl.Float64(), "clipped_share": pl.Float64(),
    "support_violations": pl.Int64(), "verdict": pl.String(), "reasons": pl.String(),
}


@dataclass(frozen=True)
class EventUnits:
    """Per-event sums of per-row columns (the i.i.d. units, in order of first appearance) and their ids."""

    columns: dict[str, np.ndarray]
    ids: pl.Series

    @cached_property
    def keys(self) -> np.ndarray:
        """Each unit's stable 64-bit key (``evaluators.keys.event_keys`` of its event id), for the bootstrap."""
        return event_keys(self.ids)


def event_units(df: pl.DataFrame, columns: dict[str, np.ndarray]) -> EventUnits:
    """Sum the per-row columns within each event (in order of first appearance): the i.i.d. units.

    The estimates are unchanged (they are ratios of sums), but the positions of one slate, which share
    a context and a draw, stop counting as independent observations. The units' keys are hashed on first
    use (only the bootstrap needs them).
    """
    ids = df.get_column("event_id")
    if ids.n_unique() == ids.len():
        return EventUnits(columns, ids)
    names = list(columns)
    frame = pl.DataFrame({"__event_id": ids, **{f"c{i}": columns[k] for i, k in enumerate(names)}})
    summed = frame.group_by("__event_id", maintain_order=True).agg(pl.exclude("__event_id").sum())
    return EventUnits({k: summed.get_column(f"c{i}").to_numpy() for i, k in enumerate(names)},
                      summed.get_column("__event_id"))


def _check_options(ci: str | None, alpha: float, n_bootstrap: int) -> None:
    if ci is not None and ci not in CI_METHODS:
        raise ValueError(f"parameter 'ci' must be one of {', '.join(CI_METHODS)}, got '{ci}'")
    if not 0 < alpha < 1:
        raise ValueError(f"parameter 'alpha' must be in (0, 1), got {alpha}")
    if n_bootstrap < 1:
        raise ValueError(f"parameter 'n_bootstrap' must be >= 1, got {n_bootstrap}")


def estimate(
    table: pl.DataFrame | str | Path | SparkDataFrame,
    estimators: str | Sequence[str | Estimator],
    *,
    ci: str | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    n_bootstrap: int = 1000,
    allow_support_violations: bool = False,
    workers: int = 2,
    verdict_policy: VerdictPolicy | None = None,
) -> pl.DataFrame:
    """Estimate the target policy's value with each estimator; one result row per estimator.

    ``table`` is a feedback table (DataFrame or parquet/csv path, see ``feedback-table.md``), or a Spark DataFrame
    (``pyspark.sql.DataFrame``, extra ``recsys-rl[spark]``): the same result from per-partition statistics computed
    on the executors (``evaluators/spark``; ``ci`` betting and auto are refused there, ``workers`` is unused);
    ``estimators`` a spec string (``"ips,snips,clipped_ips(max_weight=10)"``) or a list of names and
    :class:`Estimator` objects; ``ci`` one of ``normal``, ``bootstrap``, ``bernstein``, ``betting``, ``auto`` (see
    ``intervals.py``; ``auto`` picks ``betting`` outside ``verdict_policy``'s CLT regime) or None (no interval);
    intervals have level 1 − ``alpha``. Each row carries ``verdict`` (``ok`` or ``unreliable``) and ``reasons``
    ("; "-joined, "" when ok) under ``verdict_policy`` (default :class:`VerdictPolicy` thresholds). Raises ``TableError`` (a ValueError naming the column) for a bad
    table and ValueError naming the estimator or parameter for a bad spec or option.
    """
    if is_spark_dataframe(table):
        from evaluators.spark.engine import estimate_spark  # imports pyspark: only for a Spark table

        return estimate_spark(table, estimators, ci=ci, alpha=alpha, seed=seed, n_bootstrap=n_bootstrap,
                              allow_support_violations=allow_support_violations, verdict_policy=verdict_policy)
    _check_options(ci, alpha, n_bootstrap)
    parsed = parse_estimators(estimators)
    df = load_table(table)
    need = needed_columns(parsed)
    validate_table(df, need=need, allow_support_violations=allow_support_violations)
    data = FeedbackData(df)
    stats: list[Statistics] = [_count_weighted(est.statistics(data), df) for est in parsed]
    _check_policy(verdict_policy)
    intervals = _intervals(df, stats, ci=ci, alpha=alpha, seed=seed, n_bootstrap=n_bootstrap, workers=workers,
                           estimators=parsed, data=data, policy=verdict_policy or DEFAULT_POLICY)
    return result_frame(parsed, [float(stat.value()) for stat in stats], intervals,
                        [diagnose(est, data) for est in parsed], verdict_policy)


def needed_columns(estimators: Sequence[Estimator]) -> set[str]:
    """The table columns ``estimators`` read (validated before anything runs)."""
    return {col for est in estimators for col in (*est.needs, est.logging_column)}


def _check_policy(verdict_policy: object) -> None:
    if verdict_policy is not None and not isinstance(verdict_policy, VerdictPolicy):
        raise ValueError(f"parameter 'verdict_policy' must be a VerdictPolicy, got {type(verdict_policy).__name__}")


def result_frame(
    estimators: Sequence[Estimator], values: Sequence[float], intervals: Sequence[Interval | None],
    diagnostics: Sequence[Diagnostics], verdict_policy: VerdictPolicy | None,
) -> pl.DataFrame:
    """One result row per estimator (``RESULT_SCHEMA``), judged by ``verdict_policy``: shared by the engines."""
    rows = []
    for est, value, interval, diagnosed in zip(estimators, values, intervals, diagnostics):
        as_dict = diagnosed.as_dict()
        judged = verdict(as_dict, interval, verdict_policy)
        rows.append({
            "estimator": est.label,
            "value": value,
            "ci_low": interval.low if interval else None,
            "ci_high": interval.high if interval else None,
            "ci_method": interval.method if interval else None,
            "ci_note": interval.note if interval else None,
            **as_dict,
            "verdict": judged.verdict,
            "reasons": judged.reasons_text(),
        })
    return pl.DataFrame(rows, schema=RESULT_SCHEMA)


def with_event_count(interval: Interval, n_units: int) -> Interval:
    """The note every interval ends with: how many i.i.d. units (events) it rests on."""
    return Interval(interval.low, interval.high, interval.method, f"{interval.note}; {n_units} events")


COUNT_WEIGHT = "weight"


def _count_weighted(stat: Statistics, df: pl.DataFrame) -> Statistics:
    """Rows that stand for several logged events (column ``weight``, e.g. 1/(1 − pdrop) from a DSJSON export).

    Every estimator is Σ_p Σ num_p / Σ den_p over per-row terms, so scaling each row's terms by its count weight
    gives exactly the estimate on the undropped log: IPS becomes Σ c·w·r / Σ c, SNIPS Σ c·w·r / Σ c·w, and so on.
    """
    if COUNT_WEIGHT not in df.columns:
        return stat
    counts = df[COUNT_WEIGHT].cast(pl.Float64, strict=False).to_numpy()
    if not (np.isfinite(counts).all() and (counts > 0).all()):
        raise TableError(COUNT_WEIGHT, "count weights must be finite and positive")
    return Statistics({name: values * counts for name, values in stat.columns.items()}, stat.parts)


def _intervals(
    df: pl.DataFrame, stats: list[Statistics], *, ci: str | None, alpha: float, seed: int, n_bootstrap: int,
    workers: int, estimators: Sequence[Estimator] = (), data: FeedbackData | None = None,
    policy: VerdictPolicy = DEFAULT_POLICY,
) -> list[Interval | None]:
    if ci is None:
        return [None] * len(stats)
    columns: dict[str, np.ndarray] = {}
    for stat in stats:
        columns.update({k: v for k, v in stat.columns.items() if k not in columns})
    events = event_units(df, columns)
    units = events.columns
    n_units = len(next(iter(units.values())))
    if ci == "bootstrap":
        sums: BootstrapSums = poisson_bootstrap(units, keys=events.keys, n_resamples=n_bootstrap, seed=seed,
                                                workers=workers)
        out = [bootstrap_interval(stat.parts, sums, alpha) for stat in stats]
    elif ci in ("normal", "bernstein"):
        interval_of = normal_interval if ci == "normal" else bernstein_interval
        out = []
        for stat in stats:
            moments = Moments.from_columns({k: units[k] for k in stat.columns})
            out.append(interval_of(stat.parts, moments, alpha))
    else:  # betting or auto: per estimator, from its betting terms and (auto) its weight diagnostics
        if data is None or len(estimators) != len(stats):
            raise ValueError(f"parameter 'ci': '{ci}' needs the estimators and their data")
        out = [_betting_or_auto(df, est, stat, units, data, auto=ci == "auto", alpha=alpha, seed=seed, policy=policy)
               for est, stat in zip(estimators, stats)]
    return [with_event_count(i, n_units) for i in out]


def _betting_or_auto(
    df: pl.DataFrame, est: Estimator, stat: Statistics, units: dict[str, np.ndarray], data: FeedbackData, *,
    auto: bool, alpha: float, seed: int, policy: VerdictPolicy,
) -> Interval:
    """``betting`` for one estimator, or (``auto``) betting outside the CLT regime of ``policy`` (the verdict's
    ``min_ess_clt``, ``max_weight_share_clt``: one rule for both) and normal inside it.

    ``auto`` reports the method it resolved to (the verdict judges that method) and says why in the note.
    """
    diagnostics = diagnose(est, data)
    hard = (hard_regime(diagnostics.ess, diagnostics.max_weight_share, min_ess=policy.min_ess_clt,
                        max_weight_share_limit=policy.max_weight_share_clt) if auto else ["requested"])
    terms, why_not = None, (f"no betting construction for '{est.label}' here (it covers ips, snips, clipped_ips, "
                            "standard_ips, independent_ips and rips; events of unequal size only per slate with "
                            "reward_min 0)")
    if hard and COUNT_WEIGHT in df.columns:
        # Count-weighted rows (DSJSON pdrop) make the estimand a ratio of random sums, not a mean of X.
        why_not = f"count-weighted rows (column '{COUNT_WEIGHT}'): the estimand is a ratio of random sums"
    elif hard:
        try:
            terms = est.betting_terms(data)
        except TableError as exc:  # rewards outside [0, 1] with no declared range
            if not auto:
                raise
            why_not = str(exc)
    if terms is not None:
        sums = event_units(df, {"gain": terms.gain, "complement": terms.complement}).columns
        interval = betting_interval(terms, sums["gain"], sums["complement"], alpha=alpha, seed=seed)
        return Interval(interval.low, interval.high, interval.method,
                        f"auto chose betting ({', '.join(hard)}); {interval.note}") if auto else interval
    if not auto:
        return Interval(math.nan, math.nan, "betting", f"not available: {why_not}")
    interval = normal_interval(stat.parts, Moments.from_columns({k: units[k] for k in stat.columns}), alpha)
    reason = (f"auto kept normal outside its regime ({', '.join(hard)}): {why_not}" if hard else
              f"auto chose normal (ESS >= {policy.min_ess_clt:g}, max weight share <= {policy.max_weight_share_clt:g})")
    return Interval(interval.low, interval.high, interval.method, f"{reason}; {interval.note}")
