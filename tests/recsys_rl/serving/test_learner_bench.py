"""Smoke test: the learner benchmark's real entry point (a served log, both learner paths) on a tiny budget."""

from __future__ import annotations

import pytest

from bench.learner_bench import Args, main


def test_learner_bench_runs_and_finds_the_same_model(capsys: pytest.CaptureFixture[str]) -> None:
    main(Args(decisions=60, n_candidates=20, slate_size=3, catalog=50, rounds=1))
    report = capsys.readouterr().out
    assert "Same model: **yes**" in report
    assert "| before |" in report and "| after |" in report and "CPU per decision: before / after" in report
    assert "| VW learn (one update per slot) |" in report
