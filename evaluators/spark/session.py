"""A Spark session for ``recsys-rl evaluate --engine spark`` and the tests."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from evaluators.spark import SPARK_EXTRA

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


# Spark's driver logs its start-up (hostname, native libraries, default profile) to stderr at WARN/INFO; a CLI's
# stderr is for its own one-line errors, so a local driver logs errors only unless the caller set its own options.
_QUIET_LOG4J2 = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
"""


def _quiet_driver_options() -> str:
    path = Path(tempfile.gettempdir()) / "recsys-rl-spark-log4j2.properties"
    if not path.exists() or path.read_text() != _QUIET_LOG4J2:
        path.write_text(_QUIET_LOG4J2)
    return f"-Dlog4j2.configurationFile=file:{path}"


JVM_LOG = Path(tempfile.gettempdir()) / "recsys-rl-spark-jvm.log"


@contextmanager
def _jvm_stderr_to_file() -> Iterator[None]:
    """Start a local JVM with its stderr in ``JVM_LOG``: it prints start-up lines there ("Using incubator modules",
    the default log level) before any option of ours applies, and a CLI's stderr is for its one-line errors.

    The JVM inherits file descriptor 2 when the gateway starts, so fd 2 points at the file only for that moment and
    is restored for this process; an already running session (getOrCreate returns it) starts nothing."""
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:  # type: ignore[attr-defined]
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(JVM_LOG, "ab") as log_file:
            os.dup2(log_file.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


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
    defaults = {"spark.ui.showConsoleProgress": "false", "spark.driver.extraJavaOptions": _quiet_driver_options()}
    for key, value in {**defaults, **(conf or {})}.items():
        builder = builder.config(key, value)
    with _jvm_stderr_to_file():
        session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # py4j logs every connection it closes at INFO
    return session
