"""The bandit-feedback table (see ``shared/design/feedback-table.md``) and its validation.

One row per logged (decision, position). Estimators only read this table, so every check on its
contents lives here and runs as a single polars ``select`` (one parallel pass over the columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

REQUIRED_COLUMNS: tuple[str, ...] = (
    "event_id", "position", "action", "reward", "pscore", "target_pscore",
)
MODEL_COLUMNS: tuple[str, ...] = ("q_hat", "q_hat_target")
SLATE_COLUMNS: tuple[str, ...] = (
    "slate_pscore", "slate_target_pscore",
    "cascade_pscore", "cascade_target_pscore",
    "marginal_pscore", "marginal_target_pscore",
)
# Marginal propensities of the logged item's embedding (``evaluators.embeddings``): Σ over the items sharing it.
EMBEDDING_COLUMNS: tuple[str, ...] = ("embedding_pscore", "embedding_target_pscore")

# (logging propensity, target propensity) pairs: the logging one must be in (0, 1] except on
# support-violation rows, the target one in [0, 1].
PROPENSITY_PAIRS: dict[str, str] = {
    "pscore": "target_pscore",
    "slate_pscore": "slate_target_pscore",
    "cascade_pscore": "cascade_target_pscore",
    "marginal_pscore": "marginal_target_pscore",
    "embedding_pscore": "embedding_target_pscore",
}
# The reward range the logging surface declared (``logging_schema.rewards``); optional, but when a table carries
# them (``logs export``, replay) every reward must lie in [reward_min, reward_max]: the bounded-reward intervals
# and the gate assume it, so a reward outside it means the table was built with another reward rule.
RANGE_COLUMNS: tuple[str, str] = ("reward_min", "reward_max")
_TARGET_COLUMNS = frozenset(PROPENSITY_PAIRS.values())
_FLOAT_COLUMNS = frozenset(("reward", *MODEL_COLUMNS, *SLATE_COLUMNS, *EMBEDDING_COLUMNS, "pscore", "target_pscore"))
# An embedding's probability sums the logged item's with its siblings': smaller than the item's means the columns
# were filled for another embedding or policy (tolerance for float sums).
_EMBEDDING_AT_LEAST = {"embedding_pscore": "pscore", "embedding_target_pscore": "target_pscore"}


class TableError(ValueError):
    """The feedback table cannot be used as given. ``column`` names the offending column (or ``None``)."""

    def __init__(self, column: str | None, reason: str) -> None:
        super().__init__(f"column '{column}': {reason}" if column else reason)
        self.column = column
        self.reason = reason


@dataclass(frozen=True)
class TableCheck:
    """What validation found: row count and support violations per logging-propensity column."""

    n_rows: int
    support_violations: dict[str, int]


def load_table(source: pl.DataFrame | str | Path) -> pl.DataFrame:
    """Return ``source`` as a DataFrame, reading parquet (or ``.csv``) files from disk."""
    if isinstance(source, pl.DataFrame):
        return source
    path = Path(source)
    if not path.exists():
        raise TableError(None, f"table file not found: {path}")
    try:
        if path.suffix.lower() == ".csv":
            return pl.read_csv(path)
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several exception types for unreadable files
        raise TableError(None, f"cannot read table {path}: {exc}") from exc


def _support_violation(logging_col: str) -> pl.Expr:
    """Rows the target policy can reach but the logging policy (as logged) could not."""
    p = pl.col(logging_col)
    return (pl.col(PROPENSITY_PAIRS[logging_col]) > 0) & (p.is_null() | (p == 0))


def checked_columns(need: set[str]) -> list[str]:
    """The columns :func:`validate_table` checks for ``need``, in the order it reports them."""
    wanted = set(need) | {PROPENSITY_PAIRS[p] for p in need if p in PROPENSITY_PAIRS}
    return [*REQUIRED_COLUMNS, *sorted(wanted - set(REQUIRED_COLUMNS))]


def check_present(present: Sequence[str], columns: Sequence[str]) -> None:
    """Raise :class:`TableError` naming the first of ``columns`` not in ``present``."""
    for name in columns:
        if name not in present:
            raise TableError(name, "missing column")


def check_dtypes(df: pl.DataFrame, columns: Sequence[str]) -> None:
    """Numeric reward / propensity / model columns, integer positions."""
    for name in columns:
        dtype = df.schema[name]
        if name in _FLOAT_COLUMNS and not (dtype.is_numeric() or dtype == pl.Null):
            raise TableError(name, f"must be numeric, got {dtype}")
        if name == "position" and not dtype.is_integer():
            raise TableError(name, f"must be an integer, got {dtype}")


def validation_counts(df: pl.DataFrame, columns: Sequence[str]) -> dict[str, float | None]:
    """Counts of bad values per check (one parallel pass); parts of a table merge by :func:`merge_counts`."""
    pairs = [p for p in PROPENSITY_PAIRS if p in columns]
    exprs: list[pl.Expr] = []
    for name in columns:
        col = pl.col(name)
        bad = col.is_null()
        if name in _FLOAT_COLUMNS:
            bad = bad | col.cast(pl.Float64).is_nan()
        if name in PROPENSITY_PAIRS:
            bad = bad & ~_support_violation(name)
        exprs.append(bad.sum().alias(f"missing:{name}"))
    for p in pairs:
        col = pl.col(p).cast(pl.Float64)
        exprs.append(((col <= 0) & ~_support_violation(p)).sum().alias(f"nonpositive:{p}"))
        exprs.append((col > 1).sum().alias(f"above_one:{p}"))
        exprs.append(_support_violation(p).sum().alias(f"violations:{p}"))
        t = pl.col(PROPENSITY_PAIRS[p]).cast(pl.Float64)
        exprs.append(((t < 0) | (t > 1)).sum().alias(f"outside:{PROPENSITY_PAIRS[p]}"))
    for marginal, item in _EMBEDDING_AT_LEAST.items():
        if marginal in columns:
            below = pl.col(marginal).cast(pl.Float64) < pl.col(item).cast(pl.Float64) * (1 - 1e-9)
            exprs.append(below.sum().alias(f"below_item:{marginal}"))
    if all(c in df.columns for c in RANGE_COLUMNS):
        reward = pl.col("reward").cast(pl.Float64)
        exprs.append(((reward < pl.col("reward_min")) | (reward > pl.col("reward_max"))).sum().alias("outside:reward"))
        exprs.append(pl.col("reward_min").min().alias("range:low"))
        exprs.append(pl.col("reward_max").max().alias("range:high"))
    return df.select(exprs).row(0, named=True)


def merge_counts(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float | None]:
    """The counts of two parts of a table: sums, except the declared range's min and max."""
    merged: dict[str, float | None] = {}
    for key, value in a.items():
        other = b[key]
        if key.startswith("range:"):
            pick = min if key == "range:low" else max
            merged[key] = value if other is None else other if value is None else pick(value, other)
        else:
            merged[key] = (value or 0) + (other or 0)
    return merged


def check_counts(
    counts: dict[str, float | None], columns: Sequence[str], *, n_rows: int, allow_support_violations: bool
) -> TableCheck:
    """Raise :class:`TableError` for the first failed check in ``counts`` (see :func:`validate_table`)."""
    for name in columns:
        if counts[f"missing:{name}"]:
            raise TableError(name, f"{counts[f'missing:{name}']} null or NaN value(s)")
    if counts.get("outside:reward"):
        raise TableError("reward", f"{counts['outside:reward']} value(s) outside the declared reward range "
                                   f"[reward_min, reward_max] (here within [{counts['range:low']:g}, "
                                   f"{counts['range:high']:g}])")
    for marginal, item in _EMBEDDING_AT_LEAST.items():
        if counts.get(f"below_item:{marginal}"):
            raise TableError(marginal, f"{counts[f'below_item:{marginal}']} value(s) below {item}: the embedding's "
                                       "probability sums the logged item's and its siblings'")
    violations: dict[str, int] = {}
    for p in (p for p in PROPENSITY_PAIRS if p in columns):
        if counts[f"nonpositive:{p}"]:
            raise TableError(p, f"{counts[f'nonpositive:{p}']} value(s) <= 0 (propensities must be in (0, 1])")
        if counts[f"above_one:{p}"]:
            raise TableError(p, f"{counts[f'above_one:{p}']} value(s) > 1 (propensities must be in (0, 1])")
        target = PROPENSITY_PAIRS[p]
        if counts[f"outside:{target}"]:
            raise TableError(target, f"{counts[f'outside:{target}']} value(s) outside [0, 1]")
        violations[p] = int(counts[f"violations:{p}"] or 0)
        if violations[p] and not allow_support_violations:
            raise TableError(
                p,
                f"{violations[p]} support violation(s): rows with {target} > 0 but {p} 0 or missing "
                "(pass allow_support_violations to estimate on the rest)",
            )
    return TableCheck(n_rows=n_rows, support_violations=violations)


def validate_table(
    df: pl.DataFrame, *, need: set[str], allow_support_violations: bool
) -> TableCheck:
    """Check the columns in ``REQUIRED_COLUMNS | need``; raise :class:`TableError` naming the first bad one.

    Checks: presence; numeric dtype for reward / propensity / model columns; no null or NaN (a null or zero
    logging propensity is allowed only on support-violation rows and only when
    ``allow_support_violations``); logging propensities in (0, 1]; target propensities in [0, 1]. The steps are
    public so that an engine holding the table in parts (``evaluators.spark``) runs the same checks per part
    and reports the same first failure from the merged counts.
    """
    columns = checked_columns(need)
    check_present(df.columns, columns)
    if df.height == 0:
        raise TableError(None, "the feedback table has no rows")
    check_dtypes(df, columns)
    counts = validation_counts(df, columns)
    return check_counts(counts, columns, n_rows=df.height, allow_support_violations=allow_support_violations)
