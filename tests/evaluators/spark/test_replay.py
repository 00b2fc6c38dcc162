"""``replay`` on Spark equals the local replay on the same data dir: a log served by the real DecisionService, written
by three worker streams in several segments (``tests.log_streams``: repeated outcome ids whose first answer is in
another worker's stream, a torn tail), for a what-if from logged scores and for re-scoring with another registered
model version; the stats are the same; refused options say why; the CLI writes the table once."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pytest

from evaluators.replay.run import ReplayStats, replay
from logging_schema.segments import SegmentFormatError
from recsys_rl.errors import InvalidInput
from tests.evaluators.replay.test_replay import publish, train_on_logs
from tests.log_streams import CONFIG, served_log, split_log

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Served:
    data_dir: Path  # three worker streams, several segments each
    version: str  # a model version published after the log was served (not the one that served it)
    since: float  # the middle record's time (unix seconds)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    pytest.importorskip("pyspark", reason="the Spark tests need the extra recsys-rl[spark]")
    root = tmp_path_factory.mktemp("spark_replay")
    served_log(root / "served", 300, seed=7)
    split = split_log(root / "served", root, rotate_bytes=16 << 10)
    multi = split.multi
    assert len(list((multi / "logs").glob("worker-*/events-*.seg"))) >= 6
    return Served(multi, publish(multi, train_on_logs(multi, CONFIG)), split.times_us[len(split.times_us) // 2] / 1e6)


def _polars(table: DataFrame) -> pl.DataFrame:
    frame = pl.DataFrame(pl.from_arrow(table.toArrow()))
    return frame.with_columns(pl.col("served_at").dt.convert_time_zone("UTC"))


def _assert_same(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    keys = ["event_id", "position"]
    got, expected = got.sort(keys), expected.sort(keys)
    assert got.columns == expected.columns and got.height == expected.height > 0
    for name in expected.columns:
        a, b = got.get_column(name), expected.get_column(name)
        if b.dtype == pl.Float64:
            assert all(math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0) for x, y in zip(a.to_list(), b.to_list())), name
        else:
            assert a.cast(b.dtype).to_list() == b.to_list(), name


@pytest.mark.parametrize(("policy", "half"), [("logged@cap=0.2", False), ("version", False), ("version", True)])
def test_spark_replay_equals_local_replay(spark: SparkSession, served: Served, policy: str, half: bool) -> None:
    from evaluators.spark.replay import replay_spark

    spec = served.version if policy == "version" else policy
    since = served.since if half else None
    local_stats, spark_stats = ReplayStats(), ReplayStats()
    expected = replay(served.data_dir, spec, config=CONFIG, progress=False, stats=local_stats, since=since)
    table = replay_spark(served.data_dir, spec, spark=spark, config=CONFIG, stats=spark_stats, partitions=3,
                         since=since)
    _assert_same(_polars(table), expected)
    assert spark_stats == local_stats
    assert (local_stats.before_since > 50) == half
    assert local_stats.join.duplicate_outcomes > 0 and local_stats.read.torn_tail_records == 1
    if policy == "version":
        assert local_stats.rescored == local_stats.decisions > 0
    else:
        assert local_stats.from_logged_scores == local_stats.decisions > 0 and local_stats.read.companions > 0
        assert local_stats.columnar_segments > 0  # both replay those segments at once from their columns


@pytest.mark.parametrize(("option", "kwargs"), [("--reward-model", {"reward_model": True}),
                                                ("--embedding", {"embedding": "kmeans:4"})])
def test_options_that_need_the_whole_table_are_refused(spark: SparkSession, served: Served, option: str,
                                                       kwargs: dict[str, object]) -> None:
    from evaluators.spark.replay import replay_spark

    with pytest.raises(InvalidInput, match=f"^{option}: not with --engine spark: .*whole"):
        replay_spark(served.data_dir, "logged", spark=spark, config=CONFIG, **kwargs)  # type: ignore[arg-type]


def test_a_foreign_file_in_a_stream_is_the_local_error(spark: SparkSession, served: Served, tmp_path: Path) -> None:
    from evaluators.spark.replay import replay_spark

    data_dir = tmp_path / "data"
    shutil.copytree(served.data_dir, data_dir)
    (data_dir / "logs" / "worker-1" / "events-999999999999.seg").write_bytes(b"not a segment at all")
    with pytest.raises(SegmentFormatError) as local:
        replay(data_dir, "logged@cap=0.2", config=CONFIG, progress=False)
    with pytest.raises(SegmentFormatError) as distributed:
        replay_spark(data_dir, "logged@cap=0.2", spark=spark, config=CONFIG)
    assert str(distributed.value) == str(local.value) and "events-999999999999.seg" in str(local.value)


def test_cli_writes_the_table_directory(served: Served, tmp_path: Path) -> None:
    config = tmp_path / "surfaces.toml"
    config.write_text("[surfaces.default]\nexploration_cap = 0.2\n[surfaces.default.exploration]\nepsilon = 1.0\n")
    out = tmp_path / "table"
    args = ["replay", "--data-dir", str(served.data_dir), "--policy", "logged@cap=0.2", "--config", str(config),
            "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the Spark workers import evaluators too
    result = subprocess.run([sys.executable, "-m", "recsys_rl.cli", *args, "--engine", "spark", "--master",
                             "local[1]"], capture_output=True, text=True, cwd=REPO, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert (out / "_SUCCESS").exists() and "rows from" in result.stdout
    expected = replay(served.data_dir, "logged@cap=0.2", config=CONFIG, progress=False)
    _assert_same(pl.read_parquet(out / "*.parquet"), expected)



@pytest.mark.parametrize(("extra", "error"), [(["--master", "local[1]"], "--master: needs --engine spark"),
                                              (["--engine", "dask"], "--engine: must be one of local, polars, spark, "
                                                                     "got 'dask'"),
                                              (["--engine", "spark", "--reward-model"],
                                               "--reward-model: not with --engine spark: the reward model is "
                                               "cross-fitted over the whole table; replay locally (--engine local)")])
def test_cli_usage_errors_are_one_line_exit_2(served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              extra: list[str], error: str) -> None:
    from recsys_rl.cli import main

    code = main(["replay", "--data-dir", str(served.data_dir), "--policy", "logged", "--out", str(tmp_path / "t"),
                 *extra])
    assert (code, capsys.readouterr().err) == (2, error + "\n")
