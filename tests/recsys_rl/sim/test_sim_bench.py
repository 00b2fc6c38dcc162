"""Smoke test: the simulator benchmark's real entry point on a tiny budget."""

from __future__ import annotations

import pytest

from bench.sim_bench import main


def test_sim_bench_runs_and_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--decisions", "200", "--days", "1", "--users", "20"])
    out = capsys.readouterr().out
    assert "| default 30/5 |" in out and "| benchmark 100/10 |" in out
    for policy in ("myopic oracle", "quality-aware oracle", "uniform random", "host baseline"):
        assert f"| {policy} |" in out
