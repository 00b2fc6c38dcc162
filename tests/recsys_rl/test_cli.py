"""The command line as users run it: the real entry point in a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[2]


def recsys_rl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recsys_rl.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(("args", "names"), [
    (["serve", "--data-dir", "x", "--exploration-cap", "1.5"], "--exploration-cap"),
    (["serve"], "--data-dir"),
    (["frobnicate"], "frobnicate"),
    (["serve", "--data-dir", "x", "--config", "/nonexistent.toml"], "--config"),
    (["logs", "export", "--data-dir", "/nonexistent", "--out", "x.parquet"], "--data-dir"),
    (["serve", "--data-dir", "x", "--port", "99999"], "--port"),
    (["serve", "--data-dir", "x", "--port", "-5"], "--port"),
    (["serve", "--data-dir", "x", "--port", "http"], "--port"),
    (["serve", "--data-dir", "x", "--workers", "0"], "--workers"),
    (["serve", "--data-dir", "x", "--workers", "two"], "--workers"),
    (["serve", "--data-dir", "x", "--workers", "2", "--worker-index", "2"], "--worker-index"),
    (["serve", "--data-dir", "x", "--workers", "2", "--worker-index", "0"], "--worker-index"),  # no parent
])
def test_bad_usage_exits_2_with_one_line(args: list[str], names: str) -> None:
    result = recsys_rl(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert names in result.stderr


def test_bad_config_value_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[surfaces.home.exploration]\nalgorithm = "thompson"\n')
    result = recsys_rl("serve", "--data-dir", str(tmp_path), "--config", str(config))
    assert result.returncode == 2
    assert "surfaces.home.exploration.algorithm" in result.stderr


def test_demo_then_export(tmp_path: Path) -> None:
    """The demo's real entry point on a tiny budget, then `logs export` of what it logged."""
    demo = recsys_rl("demo", "--requests", "300", "--data-dir", str(tmp_path))
    assert demo.returncode == 0, demo.stderr
    assert "decisions logged       300" in demo.stdout
    assert (tmp_path / "click_rate.png").stat().st_size > 0
    # The counterfactual section: the far-off uniform target is flagged with its reason, beside its truth; the
    # join's per-call INFO line is gone (one sentence instead).
    uniform = [line for line in demo.stdout.splitlines() if line.startswith("uniform ")]
    assert len(uniform) == 2 and all("UNRELIABLE: ess:" in line for line in uniform), demo.stdout
    assert "truth = the simulator's exact click rate" in demo.stdout
    assert "join_rewards" not in demo.stdout + demo.stderr
    # The staged rollout section: the real admin path moves the surface to shadow; 300 requests are too few to
    # leave it (the canary move is refused with exit 3 and the demo says why), and the walk is plotted.
    section = demo.stdout.split("Staged rollout", 1)[1]
    assert "$ recsys-rl rollout set --surface default --stage shadow" in section
    assert "baseline 0.5 -> shadow 0.5 (audit #2)" in section
    assert "shadow: " in section and "top-1 match" in section  # what `rollout show` reports
    assert "failed check shadow_decisions:" in section and "# exit 3" in section
    assert "too little traffic to leave shadow" in section
    assert "final stage: shadow" in section
    assert (tmp_path / "rollout-good.png").stat().st_size > 0
    assert "Scenario 2 (automatic revert) skipped" in section
    out = tmp_path / "decisions.parquet"
    export = recsys_rl("logs", "export", "--data-dir", str(tmp_path), "--out", str(out))
    assert export.returncode == 0, export.stderr
    table = pl.read_parquet(out)
    assert table.height == 300 * 5  # one row per slate position (simulator slate size 5)
    assert table["event_id"].n_unique() == 300
    assert table["propensity"].is_between(0.0, 1.0, closed="right").all()
    assert {"reward", "clicked"} <= set(table.columns)


def test_a_second_server_on_a_data_dir_in_use_exits_2_naming_the_dir_and_the_holder(tmp_path: Path) -> None:
    first = subprocess.Popen([sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir",
                              str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert first.stdout.readline().startswith("serving on ")  # type: ignore[union-attr]
        second = recsys_rl("serve", "--port", "0", "--data-dir", str(tmp_path))
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"--data-dir: {tmp_path} is in use by another recsys-rl serve (pid {first.pid})"], second.stderr
        assert second.stdout == ""  # it stopped before binding a port
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0


def test_logs_export_partitioned_refuses_a_used_out_then_writes_what_polars_reads(tmp_path: Path) -> None:
    from logging_schema.lake import read_partitioned
    from logging_schema.writer import LogWriter
    from tests.logging_schema.builders import BASE_US, decision_record, outcome_record

    with LogWriter(tmp_path / "logs") as writer:
        for i in range(20):
            writer.submit(decision_record(f"e{i}", served_at_us=BASE_US + i * 3_600_000_000, items=("a", "b")))
            writer.submit(outcome_record(f"e{i}", "a", "click", occurred_at_us=BASE_US + i * 3_600_000_000 + 10))
    out = tmp_path / "lake"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"x")
    refused = recsys_rl("logs", "export", "--data-dir", str(tmp_path), "--out", str(out), "--partitioned")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--out" in refused.stderr and str(out) in refused.stderr and "--overwrite" in refused.stderr
    alone = recsys_rl("logs", "export", "--data-dir", str(tmp_path), "--out", str(out), "--overwrite")
    assert alone.returncode == 2 and "--overwrite: only with --partitioned" in alone.stderr

    done = recsys_rl("logs", "export", "--data-dir", str(tmp_path), "--out", str(out), "--partitioned", "--overwrite",
                     "--batch-rows", "6")
    assert done.returncode == 0, done.stderr
    assert "exported 40 rows (20 decisions, 20 outcomes)" in done.stdout and "late outcomes" not in done.stdout
    table = read_partitioned(out).collect()
    assert table.height == 40 and table["reward"].sum() == 20.0 and not (out / "old.parquet").exists()
    assert table["date"].n_unique() == 2 and set(table["surface"]) == {"default"}  # 20 hours from 22:13 spans a midnight
