"""``estimate`` on a Spark DataFrame: per-partition state on the executors, merged on the driver.

Steps: the columns are checked against the schema on the driver (the same "missing column" error as polars);
the table is narrowed to the columns used and repartitioned by ``event_id`` (an event's rows together);
``mapInArrow`` runs ``partition.run_partition`` on each partition, which yields ONE row of pickled state
(validation counts, column sums, weight sums, Moments or BootstrapSums); the driver collects those rows (one
per partition, never table rows), merges them and builds the polars result with the polars code
(``evaluate.result_frame``). Sums merge in another order than polars adds them, so results agree to rounding
(~1e-15 relative), not bit for bit.

Not available on Spark: ``ci="betting"`` and ``ci="auto"``. The betting capital process runs over every event in
one seeded order and its bound moves with each event; partitions cannot be combined by adding statistics, and
doing it exactly would mean shipping every event's (X, Y) pair to one place, which this engine never does.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from evaluators.estimators import Estimator, parse_estimators, value_from_sums
from evaluators.evaluate import (
    COUNT_WEIGHT,
    _check_options,
    _check_policy,
    needed_columns,
    result_frame,
    with_event_count,
)
from evaluators.intervals import Interval, bernstein_interval, bootstrap_interval, normal_interval
from evaluators.spark.partition import PartitionState, Plan, run_partition
from evaluators.table import RANGE_COLUMNS, TableError, check_counts, check_present, checked_columns, merge_counts
from evaluators.verdict import VerdictPolicy

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

NOT_MERGEABLE = ("betting", "auto")


def estimate_spark(
    table: DataFrame,
    estimators: str | Sequence[str | Estimator],
    *,
    ci: str | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    n_bootstrap: int = 1000,
    allow_support_violations: bool = False,
    verdict_policy: VerdictPolicy | None = None,
    partitions: int | None = None,
) -> pl.DataFrame:
    """``evaluators.estimate`` on a Spark DataFrame (same arguments, same result); ``partitions`` sets how many
    partitions the repartition by ``event_id`` makes (default: ``spark.sql.shuffle.partitions``)."""
    _check_options(ci, alpha, n_bootstrap)
    if ci in NOT_MERGEABLE:
        raise ValueError(f"parameter 'ci': '{ci}' is not available on Spark: the betting interval's capital process "
                         "runs over every event in one order, so it cannot be merged from partitions; use normal, "
                         "bernstein or bootstrap, or betting on polars (e.g. on a sample)")
    if partitions is not None and partitions < 1:
        raise ValueError(f"parameter 'partitions' must be >= 1, got {partitions}")
    parsed = parse_estimators(estimators)
    columns = checked_columns(needed_columns(parsed))
    check_present(table.columns, columns)
    keep = [c for c in table.columns if c in {*columns, *RANGE_COLUMNS, COUNT_WEIGHT}]
    narrow = table.select(*keep)
    narrow = narrow.repartition(partitions, "event_id") if partitions else narrow.repartition("event_id")
    plan = Plan(tuple(parsed), tuple(columns), allow_support_violations, ci, n_bootstrap, seed)
    rows = narrow.mapInArrow(functools.partial(run_partition, plan=plan), "state binary").collect()
    states = [pickle.loads(row["state"]) for row in rows]  # our own executors' output
    return merge(parsed, states, plan, alpha=alpha, verdict_policy=verdict_policy)


def merge(
    estimators: Sequence[Estimator], states: Sequence[PartitionState], plan: Plan, *, alpha: float,
    verdict_policy: VerdictPolicy | None,
) -> pl.DataFrame:
    """The polars result from the partitions' states, raising the errors polars raises, in its order."""
    if not states:
        raise TableError(None, "the feedback table has no rows")
    for state in states:
        if state.schema_error:
            raise TableError(*state.schema_error)
    n = sum(state.n_rows for state in states)
    counts = functools.reduce(merge_counts, (state.counts for state in states))
    check_counts(counts, plan.columns, n_rows=n, allow_support_violations=plan.allow_support_violations)
    for state in states:
        if state.error:
            raise TableError(*state.error)
    _check_policy(verdict_policy)
    first = states[0]
    values, diagnostics = [], []
    for i in range(len(estimators)):
        sums = {k: float(np.sum([state.sums[i][k] for state in states])) for k in first.sums[i]}
        values.append(float(value_from_sums(first.parts[i], sums)))
        weights = functools.reduce(lambda a, b: a.merge(b), (state.weights[i] for state in states))
        diagnostics.append(weights.diagnostics(n))
    return result_frame(estimators, values, _intervals(states, plan, alpha), diagnostics, verdict_policy)


def _intervals(states: Sequence[PartitionState], plan: Plan, alpha: float) -> list[Interval | None]:
    if plan.ci is None:
        return [None] * len(plan.estimators)
    n_units = sum(state.n_units for state in states)
    parts = states[0].parts
    if plan.ci == "bootstrap":
        sums = functools.reduce(lambda a, b: a.merge(b), (state.bootstrap for state in states))  # type: ignore[union-attr, arg-type, return-value]
        out = [bootstrap_interval(p, sums, alpha) for p in parts]  # type: ignore[arg-type]
    else:
        interval_of = normal_interval if plan.ci == "normal" else bernstein_interval
        out = []
        for i, p in enumerate(parts):
            moments = functools.reduce(lambda a, b: a.merge(b), (state.moments[i] for state in states))  # type: ignore[index]
            out.append(interval_of(p, moments, alpha))
    return [with_event_count(interval, n_units) for interval in out]
