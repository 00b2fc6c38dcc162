"""A Spark session for ``recsys-rl evaluate --engine spark`` and the tests."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from evaluators.spark import SPARK_EXTRA

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SparkMissing(ValueError):
    """pyspark is not installed: a usage error (the extra), not a crash."""


def spark_session(master: str, *, app_name: str = "recsys-rl evaluate", conf: dict[str, str] | None = None,
                  ) -> SparkSession:
    """Get or create a session on ``master`` (``local[*]``, ``spark://host:7077``, ``yarn``, ...)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkMissing(f"option '--engine': spark needs pyspark: pip install '{SPARK_EXTRA}'") from None
    # Spark starts its Python workers with `python3` from PATH unless told; that one may lack pyarrow, polars and
    # this package (mapInArrow then fails with "No module named 'pyarrow'" on the executor). In local mode the
    # workers should be this very interpreter; a cluster sets its own (spark.pyspark.python, see docs/scaling.md).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in {"spark.ui.showConsoleProgress": "false", **(conf or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
