"""What every Spark partition computes, on the executors: the mergeable state of the estimators on its rows.

A partition holds whole events (the driver repartitions by ``event_id``), so the per-event windows (slate
denominators, pseudo-inverse, cascade DR's previous weight) and the event units of the intervals are exactly
those of the whole table. Nothing an estimator computes for ``normal``, ``bernstein`` or ``bootstrap`` needs
the rest of the table: the only whole-table quantities in ``evaluators`` (the reward range min/max and the
largest event size) feed the betting terms, which Spark refuses (see ``engine.py``). The state is a few
hundred bytes per estimator (plus n_bootstrap × columns floats for the bootstrap) whatever the row count.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import pyarrow as pa

from evaluators.diagnostics import Diagnostics
from evaluators.estimators import Estimator, FeedbackData, Statistics
from evaluators.evaluate import EventUnits, _count_weighted, event_units
from evaluators.intervals import BootstrapSums, Moments, poisson_bootstrap
from evaluators.table import TableError, check_counts, check_dtypes, validation_counts

STATE_SCHEMA = pa.schema([pa.field("state", pa.binary())])


@dataclass(frozen=True)
class Plan:
    """What the driver asks of every partition (pickled with the function shipped to the executors)."""

    estimators: tuple[Estimator, ...]
    columns: tuple[str, ...]          # the validated columns, in validate_table's order
    allow_support_violations: bool
    ci: str | None
    n_bootstrap: int
    seed: int


@dataclass(frozen=True)
class WeightSums:
    """Σw, Σw², max w, clipped rows and support violations of one estimator's diagnostic weights; mergeable."""

    total: float
    squares: float
    largest: float
    clipped: int | None
    violations: int

    def merge(self, other: WeightSums) -> WeightSums:
        clipped = None if self.clipped is None or other.clipped is None else self.clipped + other.clipped
        return WeightSums(self.total + other.total, self.squares + other.squares, max(self.largest, other.largest),
                          clipped, self.violations + other.violations)

    def diagnostics(self, n: int) -> Diagnostics:
        """The polars diagnostics (``diagnostics.weight_summary``) from the merged sums of ``n`` rows."""
        return Diagnostics(
            n=n,
            ess=self.total * self.total / self.squares if self.squares > 0 else math.nan,
            max_weight=self.largest,
            max_weight_share=self.largest / self.total if self.total > 0 else math.nan,
            clipped_share=None if self.clipped is None else float(self.clipped) / n,
            support_violations=self.violations,
        )


@dataclass(frozen=True)
class PartitionState:
    """One partition's contribution. ``schema_error`` / ``error`` carry a TableError (column, reason) raised on
    its rows, so that the driver raises the same error as polars instead of a Spark stack trace."""

    n_rows: int
    counts: dict[str, float | None]
    schema_error: tuple[str | None, str] | None = None
    error: tuple[str | None, str] | None = None
    parts: tuple[tuple[tuple[str, str], ...], ...] = ()
    sums: tuple[dict[str, float], ...] = ()
    weights: tuple[WeightSums, ...] = ()
    n_units: int = 0
    moments: tuple[Moments, ...] | None = None
    bootstrap: BootstrapSums | None = None


def bootstrap_sums(units: EventUnits, plan: Plan) -> BootstrapSums:
    """Poisson-bootstrap sums of this partition's units. The weights are keyed by event id (counter-based), so
    they do not depend on where an event sits in the table: the partitions' sums add up to the whole table's."""
    return poisson_bootstrap(units.columns, keys=units.keys, n_resamples=plan.n_bootstrap, seed=plan.seed, workers=1)


def _weight_sums(est: Estimator, data: FeedbackData) -> WeightSums:
    w = est.diagnostic_weights(data)
    share = est.clipped_share(data)
    return WeightSums(float(np.sum(w)), float(np.dot(w, w)), float(np.max(w)),
                      None if share is None else round(share * data.n), data.support_violations(est.logging_column))


def partition_state(df: pl.DataFrame, plan: Plan) -> PartitionState:
    """The same code as ``evaluate.estimate`` on this partition's rows, stopped before anything non-mergeable."""
    try:
        check_dtypes(df, plan.columns)
    except TableError as exc:
        return PartitionState(df.height, {}, schema_error=(exc.column, exc.reason))
    counts = validation_counts(df, plan.columns)
    try:
        check_counts(counts, plan.columns, n_rows=df.height, allow_support_violations=plan.allow_support_violations)
    except TableError:
        return PartitionState(df.height, counts)  # the merged counts fail the same check: the driver raises it
    data = FeedbackData(df)
    try:
        stats: Sequence[Statistics] = [_count_weighted(est.statistics(data), df) for est in plan.estimators]
    except TableError as exc:
        return PartitionState(df.height, counts, error=(exc.column, exc.reason))
    state = PartitionState(
        df.height, counts, parts=tuple(stat.parts for stat in stats),
        sums=tuple({k: float(np.sum(v)) for k, v in stat.columns.items()} for stat in stats),
        weights=tuple(_weight_sums(est, data) for est in plan.estimators),
    )
    if plan.ci is None:
        return state
    columns: dict[str, np.ndarray] = {}
    for stat in stats:
        columns.update({k: v for k, v in stat.columns.items() if k not in columns})
    units = event_units(df, columns)
    n_units = len(units.ids)
    if plan.ci == "bootstrap":
        return replace(state, n_units=n_units, bootstrap=bootstrap_sums(units, plan))
    moments = tuple(Moments.from_columns({k: units.columns[k] for k in stat.columns}) for stat in stats)
    return replace(state, n_units=n_units, moments=moments)


def run_partition(batches: Iterator[pa.RecordBatch], plan: Plan) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: the partition's Arrow batches → one polars DataFrame → one row of pickled state.

    An empty partition yields nothing (the driver merges what there is; no rows at all is the polars error).
    """
    collected = list(batches)
    rows = sum(batch.num_rows for batch in collected)
    if rows == 0:
        return
    df = pl.DataFrame(pa.Table.from_batches(collected))
    state = partition_state(df, plan)
    yield pa.RecordBatch.from_pydict({"state": [pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)]},
                                     schema=STATE_SCHEMA)
