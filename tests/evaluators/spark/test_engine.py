"""Spark equals polars: every estimator, normal and Bernstein intervals, diagnostics, 1/3/7 partitions, errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pytest

from evaluators.estimators import Estimator, registry
from evaluators.evaluate import estimate
from evaluators.spark.engine import estimate_spark
from evaluators.synthetic import ContextualProblem, SlateProblem
from evaluators.table import TableError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

Frames = dict[str, tuple[pl.DataFrame, "SparkDataFrame"]]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def every_estimator() -> list[Estimator]:
    """One instance of every registered estimator (parameters 5: clips and switches some rows)."""
    return [cls(**{f.name: 5.0 for f in fields(cls)}) for cls in registry().values()]  # type: ignore[arg-type]


def _with_model_and_embedding(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = df.height
    pscore, target = df["pscore"].to_numpy(), df["target_pscore"].to_numpy()
    return df.with_columns(
        pl.Series("q_hat", rng.uniform(0, 1, n)),
        pl.Series("q_hat_target", rng.uniform(0, 1, n)),
        pl.Series("embedding_pscore", pscore + (1 - pscore) * rng.uniform(0, 1, n)),
        pl.Series("embedding_target_pscore", target + (1 - target) * rng.uniform(0, 1, n)),
    )


def slate_table() -> pl.DataFrame:
    """Slates of 3 positions with every propensity, model and embedding column."""
    df = SlateProblem(400, slate_length=3, logging_temperature=0.7).draw(11)
    df = df.with_columns(pl.col("pscore").alias("marginal_pscore"), pl.col("target_pscore").alias("marginal_target_pscore"))
    return _with_model_and_embedding(df, 12)


def contextual_table(count_weight: bool = False) -> pl.DataFrame:
    """Single-row events (no per-event sums), slate columns equal to the row's; optionally a count ``weight``."""
    df = ContextualProblem(1500, logging_temperature=0.5).draw(21)
    df = df.with_columns(*(pl.col(p).alias(f"{kind}_{p}") for kind in ("slate", "cascade", "marginal")
                           for p in ("pscore", "target_pscore")))
    df = _with_model_and_embedding(df, 22)
    if count_weight:
        df = df.with_columns(pl.Series("weight", np.random.default_rng(23).integers(1, 4, df.height)))
    return df


TABLES = {"slates": slate_table, "contextual": contextual_table, "count_weight": lambda: contextual_table(True)}


def assert_same(spark_result: pl.DataFrame, polars_result: pl.DataFrame, rel: float = 1e-9) -> None:
    assert spark_result.columns == polars_result.columns
    assert spark_result.height == polars_result.height
    for column in polars_result.columns:
        for s, p in zip(spark_result[column].to_list(), polars_result[column].to_list()):
            if isinstance(p, float) and isinstance(s, float) and not (math.isnan(p) and math.isnan(s)):
                assert abs(s - p) <= rel * max(abs(p), abs(s)), (column, s, p)
            elif not (isinstance(p, float) and isinstance(s, float)):
                assert s == p, (column, s, p)


@pytest.fixture(scope="module")
def frames(spark: SparkSession) -> Frames:
    tables = {name: make() for name, make in TABLES.items()}
    return {name: (df, spark.createDataFrame(df.to_arrow())) for name, df in tables.items()}


@pytest.mark.parametrize("partitions", [1, 3, 7])
@pytest.mark.parametrize("ci", ["normal", "bernstein"])
@pytest.mark.parametrize("table", list(TABLES))
def test_every_estimator_equals_polars(frames: Frames, table: str, ci: str, partitions: int) -> None:
    df, sdf = frames[table]
    estimators = every_estimator()
    expected = estimate(df, estimators, ci=ci)
    got = estimate_spark(sdf, estimators, ci=ci, partitions=partitions)
    assert_same(got, expected)
    # The comparison has teeth: real intervals and diagnostics, clipped rows, several units per slate.
    assert expected["ci_low"].is_not_null().all() and (expected["clipped_share"].drop_nulls() > 0).all()
    assert expected["ci_note"][0].endswith("400 events" if table == "slates" else "1500 events")


def test_public_estimate_dispatches_spark_without_ci(frames: Frames) -> None:
    df, sdf = frames["slates"]
    assert_same(estimate(sdf, "ips,snips,rips,cascade_dr"), estimate(df, "ips,snips,rips,cascade_dr"))


def test_allowed_support_violations_are_counted_like_polars(frames: Frames) -> None:
    df, _ = frames["contextual"]
    df = df.with_columns(pl.when(pl.int_range(pl.len()) % 97 == 0).then(0.0).otherwise(pl.col("pscore")).alias("pscore"))
    sdf = frames["contextual"][1].sparkSession.createDataFrame(df.to_arrow())
    expected = estimate(df, "ips,snips,dr", ci="normal", allow_support_violations=True)
    got = estimate_spark(sdf, "ips,snips,dr", ci="normal", allow_support_violations=True, partitions=3)
    assert_same(got, expected)
    assert expected["support_violations"][0] == 16


def _error(run: Callable[[], object]) -> str:
    with pytest.raises(ValueError) as info:
        run()
    return str(info.value)


BAD_TABLES = {
    "missing column": lambda df: df.drop("pscore"),
    "propensity 0 outside support": lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) % 50 == 0).then(0.0).otherwise(pl.col("pscore")).alias("pscore")),
    "propensity above 1": lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) % 70 == 0).then(1.5).otherwise(pl.col("pscore")).alias("pscore")),
    "reward outside declared range": lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) % 300 == 7).then(2.0).otherwise(pl.col("reward")).alias("reward")),
    "non-numeric reward": lambda df: df.with_columns(pl.col("reward").cast(pl.String)),
    "null q_hat": lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) % 40 == 0).then(None).otherwise(pl.col("q_hat")).alias("q_hat")),
    "zero count weight": lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(0).otherwise(pl.col("weight")).alias("weight")),
    "no rows": lambda df: df.head(0),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_input_gives_the_polars_error(frames: Frames, case: str) -> None:
    df, sdf = frames["count_weight"]
    bad = BAD_TABLES[case](df)
    with pytest.raises(TableError) as on_polars:
        estimate(bad, "ips,dr", ci="normal")
    bad_spark = sdf.sparkSession.createDataFrame(bad.to_arrow(), schema=sdf.schema if case == "no rows" else None)
    with pytest.raises(TableError) as on_spark:
        estimate_spark(bad_spark, "ips,dr", ci="normal", partitions=3)
    assert str(on_spark.value) == str(on_polars.value)


@pytest.mark.parametrize("ci", ["betting", "auto"])
def test_betting_and_auto_are_refused_with_the_reason(frames: Frames, ci: str) -> None:
    message = _error(lambda: estimate_spark(frames["slates"][1], "ips", ci=ci))
    assert f"'{ci}' is not available on Spark" in message and "cannot be merged from partitions" in message


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_bootstrap_equals_polars(frames: Frames, partitions: int) -> None:
    df, sdf = frames["slates"]
    estimators = every_estimator()
    expected = estimate(df, estimators, ci="bootstrap", n_bootstrap=200, seed=5)
    assert_same(estimate_spark(sdf, estimators, ci="bootstrap", n_bootstrap=200, seed=5, partitions=partitions),
                expected)
