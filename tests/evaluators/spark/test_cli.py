"""``recsys-rl evaluate --engine spark`` through the real entry point, on a Hive-partitioned parquet table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from evaluators.cli import main
from evaluators.evaluate import estimate
from evaluators.synthetic import SlateProblem

REPO = Path(__file__).resolve().parents[3]


def _run(args: list[str], *, pythonpath: str) -> subprocess.CompletedProcess[str]:
    # The Spark workers import evaluators too: they inherit this PYTHONPATH from the driver.
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, "-m", "recsys_rl.cli", "evaluate", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=180)


def _lake(tmp_path: Path) -> tuple[Path, pl.DataFrame]:
    """A feedback table in the layout of `logs export --partitioned`: surface=NAME/date=YYYY-MM-DD/*.parquet."""
    table = SlateProblem(300, slate_length=2).draw(4).with_columns(
        pl.lit("home").alias("surface"),
        pl.when(pl.col("event_id").cast(pl.Int64) % 3 == 0).then(pl.lit("2026-12-01"))
        .otherwise(pl.lit("2026-12-02")).alias("date"),
    )
    out = tmp_path / "lake"
    table.write_parquet(out, partition_by=["surface", "date"])
    return out, table.drop("surface", "date")


def test_spark_engine_reads_the_partitioned_table_and_equals_polars(tmp_path: Path) -> None:
    pytest.importorskip("pyspark", reason="the Spark tests need the extra recsys-rl[spark]")
    lake, table = _lake(tmp_path)
    assert len(list(lake.glob("surface=home/date=*/*.parquet"))) == 2
    spec = "ips,snips,standard_ips,rips,clipped_ips(max_weight=4)"
    result = _run([str(lake), "--engine", "spark", "--master", "local[1]", "--estimators", spec, "--ci", "bernstein",
                   "--format", "json"], pythonpath=str(REPO))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the JVM's start-up lines go to its log file: stderr is for the CLI's errors
    got = json.loads(result.stdout)
    expected = estimate(table, spec, ci="bernstein").to_dicts()
    assert [row["estimator"] for row in got] == [row["estimator"] for row in expected]
    for g, e in zip(got, expected):
        for key in ("value", "ci_low", "ci_high", "ess", "max_weight", "max_weight_share"):
            assert math.isclose(g[key], e[key], rel_tol=1e-9), (g["estimator"], key)
        assert (g["n"], g["ci_note"], g["clipped_share"]) == (e["n"], e["ci_note"], e["clipped_share"])


def test_spark_engine_without_pyspark_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    # A pyspark that cannot be imported, ahead of the installed one on the path: what a polars-only install sees.
    shadow = tmp_path / "shadow" / "pyspark"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'pyspark'\")\n")
    lake, _ = _lake(tmp_path)
    result = _run([str(lake), "--engine", "spark", "--estimators", "ips"],
                  pythonpath=f"{shadow.parent}{os.pathsep}{REPO}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "recsys-rl evaluate: error: option '--engine': spark needs pyspark: pip install 'recsys-rl[spark]'"]
    assert result.stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    (["--engine", "flink"], "option '--engine' must be one of polars, spark, got 'flink'"),
    (["--master", "local[2]"], "option '--master' needs '--engine spark'"),
])
def test_bad_engine_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                         message: str) -> None:
    lake, _ = _lake(tmp_path)
    assert main(["evaluate", str(lake), "--estimators", "ips", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"recsys-rl evaluate: error: {message}"] and captured.out == ""
