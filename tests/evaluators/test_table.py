"""Bad tables raise TableError naming the column."""

from __future__ import annotations

import math

import polars as pl
import pytest

from evaluators import TableError, estimate, validate_table


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("pscore", 0.0, "<= 0"),
        ("pscore", -0.1, "<= 0"),
        ("pscore", 1.5, "> 1"),
        ("pscore", math.nan, "null or NaN"),
        ("pscore", None, "null or NaN"),
        ("reward", math.nan, "null or NaN"),
        ("reward", None, "null or NaN"),
        ("target_pscore", 1.2, "outside [0, 1]"),
        ("target_pscore", -0.2, "outside [0, 1]"),
        ("q_hat", math.nan, "null or NaN"),
    ],
)
def test_bad_values_name_the_column(small_table: pl.DataFrame, column: str, value: float | None, message: str) -> None:
    # Row e4 has target_pscore 0, so a zero/missing pscore there is not a support violation.
    bad = small_table.with_columns(
        pl.when(pl.col("event_id") == "e4").then(pl.lit(value, dtype=pl.Float64)).otherwise(pl.col(column)).alias(column)
    )
    with pytest.raises(TableError, match=f"column '{column}'.*{message.replace('[', '.').replace(']', '.')}") as err:
        estimate(bad, "dr")
    assert err.value.column == column


@pytest.mark.parametrize("column", ["event_id", "reward", "pscore", "target_pscore", "q_hat_target"])
def test_missing_column(small_table: pl.DataFrame, column: str) -> None:
    with pytest.raises(TableError, match=f"column '{column}': missing column"):
        estimate(small_table.drop(column), "ips,dm")


def test_non_numeric_column(small_table: pl.DataFrame) -> None:
    with pytest.raises(TableError, match="column 'reward': must be numeric"):
        validate_table(small_table.with_columns(pl.col("reward").cast(pl.String)), need=set(),
                       allow_support_violations=False)


def test_support_violations_error_unless_allowed(small_table: pl.DataFrame) -> None:
    # e1 has target_pscore 0.5 > 0: a logged pscore of 0 there is a support violation.
    bad = small_table.with_columns(pl.when(pl.col("event_id") == "e1").then(0.0).otherwise(pl.col("pscore")).alias("pscore"))
    with pytest.raises(TableError, match="column 'pscore': 1 support violation"):
        estimate(bad, "ips")
    out = estimate(bad, "ips", allow_support_violations=True).row(0, named=True)
    assert out["support_violations"] == 1
    assert out["value"] == pytest.approx((0 + 0 + 1 + 0) / 4)  # the violating row gets weight 0
    missing = bad.with_columns(pl.when(pl.col("event_id") == "e1").then(None).otherwise(pl.col("pscore")).alias("pscore"))
    assert estimate(missing, "ips", allow_support_violations=True)["support_violations"][0] == 1


def test_empty_table_and_bad_options(small_table: pl.DataFrame) -> None:
    with pytest.raises(TableError, match="no rows"):
        estimate(small_table.clear(), "ips")
    with pytest.raises(ValueError, match="parameter 'ci'"):
        estimate(small_table, "ips", ci="wald")
    with pytest.raises(ValueError, match="parameter 'alpha'"):
        estimate(small_table, "ips", ci="normal", alpha=1.5)
    with pytest.raises(TableError, match="not found"):
        estimate("/nonexistent/table.parquet", "ips")


def test_reads_parquet(small_table: pl.DataFrame, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.parquet"
    small_table.write_parquet(path)
    assert estimate(path, "ips")["value"][0] == pytest.approx(0.75)


def test_rewards_outside_the_declared_range_name_the_reward_column(small_table: pl.DataFrame) -> None:
    ranged = small_table.with_columns(reward_min=pl.lit(0.0), reward_max=pl.lit(1.0))
    validate_table(ranged, need=set(), allow_support_violations=False)  # in range: fine
    bad = ranged.with_columns(pl.when(pl.col("event_id") == "e4").then(3.0).otherwise(pl.col("reward")).alias("reward"))
    with pytest.raises(TableError, match=r"column 'reward': 1 value\(s\) outside the declared reward range") as err:
        estimate(bad, "ips")
    assert err.value.column == "reward"
