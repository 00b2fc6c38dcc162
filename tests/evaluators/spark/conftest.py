"""One local Spark session for the whole test run, started only when a Spark test asks for it (~5 s)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    pytest.importorskip("pyspark", reason="the Spark tests need the extra recsys-rl[spark]")
    from evaluators.spark.session import spark_session

    session = spark_session("local[2]", app_name="recsys-rl tests", conf={
        "spark.sql.shuffle.partitions": "4",     # the default 200 would make 200 tiny tasks per job
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.memory": "1g",
    })
    yield session
    session.stop()
