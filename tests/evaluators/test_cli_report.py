"""The evaluate command and the three report formats, run for real on a parquet file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from evaluators.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def table_path(small_table: pl.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "feedback.parquet"
    pl.concat([small_table.with_columns(pl.col("event_id") + f"-{i}") for i in range(25)]).write_parquet(path)
    return path


def test_json_to_stdout(table_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(table_path), "--estimators", "ips,dr", "--ci", "normal", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["estimator"] for r in records] == ["ips", "dr"]
    assert records[0]["value"] == pytest.approx(0.75) and records[0]["ci_method"] == "normal"
    assert records[0]["n"] == 100 and records[0]["ci_low"] < 0.75 < records[0]["ci_high"]


def test_table_format(table_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(table_path), "--estimators", "ips,clipped_ips(max_weight=1.5)"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["estimator", "value", "ci_low"]
    assert lines[2].split()[:2] == ["ips", "0.75"]
    assert len({len(line) for line in lines[:4]}) == 1          # aligned columns


def test_html_is_self_contained(table_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    code = main(["evaluate", str(table_path), "--estimators", "ips,snips", "--ci", "bootstrap",
                 "--n-bootstrap", "100", "--format", "html", "--out", str(out)])
    assert code == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2           # forest plot and weight histogram
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "snips" in page and "ESS" in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--estimators", "ips,nope"], "unknown estimator 'nope'"),
        (["--estimators", "clipped_ips(max_weight=x)"], "parameter 'max_weight'"),
        (["--estimators", "ips", "--ci", "wald"], "option '--ci'"),
        (["--estimators", "ips", "--alpha", "big"], "option '--alpha'"),
        (["--estimators", "ips", "--format", "xml"], "option '--format'"),
        (["--estimators", "dm"], None),                        # fine: q_hat_target is present
    ],
)
def test_bad_usage_exits_2_with_one_line(
    table_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str | None
) -> None:
    code = main(["evaluate", str(table_path), *args])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0 and err == ""
        return
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err


def test_bad_table_names_the_column(small_table: pl.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    small_table.with_columns(pl.lit(1.5).alias("pscore")).write_parquet(path)
    result = subprocess.run(
        [sys.executable, "-m", "evaluators.cli", "evaluate", str(path), "--estimators", "ips"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["recsys-rl evaluate: error: column 'pscore': 4 value(s) > 1 "
                                                  "(propensities must be in (0, 1])"]
    assert result.stdout == ""


def test_missing_argument_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "t.parquet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--estimators" in err[0]
