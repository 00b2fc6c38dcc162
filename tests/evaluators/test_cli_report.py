"""The evaluate command and the three report formats, run for real on a parquet file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from evaluators import estimate
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
    # ESS 58 and 64 here: lowered thresholds make both rows ok, so the plain layout shows.
    assert main(["evaluate", str(table_path), "--estimators", "ips,clipped_ips(max_weight=1.5)",
                 "--min-ess", "50", "--max-clipped-share", "0.25"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["estimator", "value", "ci_low"] and lines[0].split()[-1] == "verdict"
    assert lines[2].split()[:2] == ["ips", "0.75"] and lines[2].split()[-1] == "ok"
    # aligned columns; the verdict runs free at the end of the line
    assert len({len(line.rsplit(None, 1)[0]) for line in lines[:4]}) == 1
    assert len({line.rindex(token) for line, token in zip(lines[:4], ["verdict", "-------", "ok", "ok"])}) == 1


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
        (["--estimators", "ips", "--min-ess", "0"], "option '--min-ess' must be >= 1, got 0"),
        (["--estimators", "ips", "--min-ess", "many"], "option '--min-ess' must be a number, got 'many'"),
        (["--estimators", "ips", "--max-weight-share", "1.5"], "option '--max-weight-share' must be in (0, 1]"),
        (["--estimators", "ips", "--max-clipped-share", "0"], "option '--max-clipped-share' must be in (0, 1]"),
        (["--estimators", "ips", "--min-ess-clt", "nan"], "option '--min-ess-clt' must be a finite number"),
        (["--estimators", "ips", "--max-weight-share-clt", "-1"], "option '--max-weight-share-clt' must be in"),
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


# --- verdicts in the three formats ---------------------------------------------------------------------------


@pytest.fixture
def far_target_path(tmp_path: Path) -> Path:
    """The demo's uniform case in miniature: ESS ≈ 22 of 2000 rows (see test_verdict.far_target_table)."""
    from tests.evaluators.test_verdict import far_target_table

    path = tmp_path / "far.parquet"
    far_target_table().write_parquet(path)
    return path


def test_table_marks_unreliable_rows(far_target_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(far_target_path), "--estimators", "ips,snips", "--ci", "normal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line in lines[2:4]:
        value, low, high = line.split()[1:4]
        assert value.startswith("[") and value.endswith("]") and low.startswith("[") and high.endswith("]")
        assert "UNRELIABLE: ess: 2" in line and "< 100" in line                  # ESS 22.x < 100
    assert any("2 of 2 estimate(s) UNRELIABLE" in line for line in lines)


def test_json_carries_verdict_and_reasons_list(far_target_path: Path, table_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(far_target_path), "--estimators", "ips", "--ci", "normal", "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["verdict"] == "unreliable" and isinstance(record["reasons"], list)
    assert record["reasons"][0].startswith("ess: ") and len(record["reasons"]) == 3
    assert main(["evaluate", str(table_path), "--estimators", "ips", "--format", "json", "--min-ess", "50"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert (record["verdict"], record["reasons"]) == ("ok", [])


def test_html_strikes_unreliable_values_and_gives_reasons(far_target_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["evaluate", str(far_target_path), "--estimators", "ips,clipped_ips(max_weight=500)",
                 "--ci", "normal", "--format", "html", "--out", str(out), "--min-ess", "10"]) == 0
    page = out.read_text()
    rows = page.split("<tr")[2:]                                        # skip the text before and the header
    assert len(rows) == 2 and all(r.startswith(" class='unreliable'") for r in rows)
    assert rows[0].count("class='discredited'") == 3                  # value, ci_low, ci_high struck through
    assert "<li>interval: normal needs ESS &gt;= 1000 (CLT regime), got 2" in rows[0]
    assert "text-decoration:line-through" in page and "2 of 2 estimate(s) UNRELIABLE" in page


def test_forest_plot_greys_and_hatches_unreliable_rows() -> None:
    from matplotlib.patches import Rectangle

    from evaluators.report import forest_figure
    from tests.evaluators.test_verdict import far_target_table

    low_ess = estimate(far_target_table(), "ips,snips", ci="normal")
    on_policy = estimate(far_target_table().with_columns(pl.col("pscore").alias("target_pscore")), "ips", ci="normal")
    fig = forest_figure(pl.concat([low_ess, on_policy]))
    ax = fig.axes[0]
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch() == "///"]
    assert len(hatched) == 2                                            # one band per unreliable interval
    labels = {t.get_text(): t.get_color() for t in ax.get_yticklabels()}
    assert labels["ips (unreliable)"] == labels["snips (unreliable)"] == "#9a9a9a" and labels["ips"] == "#222222"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["ok", "unreliable: not evidence (see reasons)"]
