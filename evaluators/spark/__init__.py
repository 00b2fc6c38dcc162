"""The estimators on Apache Spark (extra ``recsys-rl[spark]``): same results as polars, from per-partition state.

``evaluators.estimate`` hands a ``pyspark.sql.DataFrame`` to :func:`evaluators.spark.engine.estimate_spark`.
This package's top level must not import pyspark: :func:`is_spark_dataframe` recognises a Spark DataFrame by
its class names, so polars users never pay for (or need) pyspark.
"""

from __future__ import annotations

SPARK_EXTRA = "recsys-rl[spark]"


def is_spark_dataframe(obj: object) -> bool:
    """True for a ``pyspark.sql.DataFrame`` (classic or Spark Connect), without importing pyspark."""
    return any(cls.__name__ == "DataFrame" and cls.__module__.startswith("pyspark.sql")
               for cls in type(obj).__mro__)
